"""The documentation keeps up with the code: every key the manifest reader accepts is in the manifest reference, once;
README.md stays a front door whose links lead somewhere; every shipped manifest is listed in manifests/README.md.

`mkdocs build --strict` (`make docs`, and so `make test`) checks the site itself: every page in the navigation,
every link and anchor between pages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "manifest.md"
README_LINES = 200
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
ROW_KEY = re.compile(r"^\| `([^`]+)` \|", re.MULTILINE)  # a reference table's row, documenting the key it starts with


def documented_keys() -> list[str]:
    """The keys the reference documents: the first cell of each row of its tables, in order."""
    return ROW_KEY.findall(REFERENCE.read_text(encoding="utf-8"))


def relative_links(page: Path) -> list[str]:
    """The Markdown links of `page` that point into the repository (no URL, no anchor on the page itself)."""
    targets = LINK.findall(page.read_text(encoding="utf-8"))
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", target)]


def test_manifest_keys_are_dotted_as_the_reference_spells_them():
    from onnxcam.runner.config import manifest_keys

    keys = set(manifest_keys())
    # a section's key, a method's option as its top-level section spells it, a metric's option under evaluate
    assert {"model", "images.root", "output.overlays.quality", "runtime.backend", "runtime.providers",
            "scorecam.batch_size", "occlusion.patch", "evaluate.deletion.steps"} <= keys


def test_every_manifest_key_is_documented_in_the_reference():
    from onnxcam.runner.config import manifest_keys

    text = REFERENCE.read_text(encoding="utf-8")
    missing = sorted(key for key in manifest_keys() if f"`{key}`" not in text)
    assert not missing, f"docs/manifest.md does not document {', '.join(missing)}: add a row for each"


def test_the_reference_documents_each_key_once_and_only_keys_the_reader_accepts():
    from onnxcam.runner.config import manifest_keys

    keys = set(manifest_keys())
    rows = documented_keys()
    twice = sorted({key for key in rows if rows.count(key) > 1})
    assert not twice, f"docs/manifest.md documents {', '.join(twice)} in more than one row"
    unknown = [row for row in rows if row not in keys and not any(key.startswith(f"{row}.") for key in keys)]
    assert not unknown, f"docs/manifest.md documents {', '.join(unknown)}, which the manifest reader does not accept"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_LINES, f"README.md has {lines} lines; keep it to {README_LINES} and move the rest to docs/"


def test_relative_links_lead_to_files_that_exist():
    pages = [ROOT / "README.md", ROOT / "manifests" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = [f"{page.relative_to(ROOT)}: {target}" for page in pages for target in relative_links(page)
              if not (page.parent / target.split("#", 1)[0]).exists()]
    assert not broken, f"links to files that do not exist: {'; '.join(broken)}"
    assert any(relative_links(ROOT / "README.md")), "README.md links into docs/: the links were not found"


def test_every_shipped_manifest_is_listed_in_the_manifests_readme():
    listed = (ROOT / "manifests" / "README.md").read_text(encoding="utf-8")
    shipped = sorted(path.name for path in (ROOT / "manifests").glob("*.yaml"))
    assert shipped, "no manifests found in manifests/"
    missing = [name for name in shipped if f"`{name}`" not in listed]
    assert not missing, f"manifests/README.md does not list {', '.join(missing)}: add a row for each"
    named = set(re.findall(r"`([\w.-]+\.yaml)`", listed))
    assert named <= set(shipped), f"manifests/README.md lists {', '.join(sorted(named - set(shipped)))}, not shipped"
