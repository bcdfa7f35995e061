"""Which wheels `pip install onnxcam` and `pip install 'onnxcam[cuda]'` get on Linux x86_64, Linux aarch64, macOS
arm64 and Windows x86_64, resolved from this machine against the package index, and the table of them in
docs/install.md.
A script, not a test: it needs the index, and pip downloads the wheels it weighs where the index serves no
separate metadata (a few GB: the CUDA libraries of two platforms; 20 s here with pip's cache warm).

    python tools/resolve_platforms.py [--python 3.11] [--print-only]

pip's `--platform` picks wheels for another platform but evaluates environment markers for the machine it runs on,
so the script evaluates onnxcam's own markers (pyproject.toml) for each platform itself and hands pip the
requirements that apply there; a dependency's dependency whose marker would choose differently on the target
platform than here is printed as a warning (none was when the table was made). It fails when a platform
does not resolve or would get onnxruntime and onnxruntime-gpu at once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from doc_block import ROOT, replace_block
from packaging.markers import default_environment
from packaging.requirements import Requirement

PAGE = ROOT / "docs" / "install.md"
START = "<!-- platform table: tools/resolve_platforms.py writes between these lines -->"
END = "<!-- end of platform table -->"
RUNTIMES = ("onnxruntime", "onnxruntime-gpu")


def manylinux(arch: str, glibc: int = 35) -> list[str]:
    """pip matches a manylinux tag given with --platform exactly, so name every glibc from 2.17 up to 2.`glibc`."""
    return [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 16, -1)] + [f"manylinux2014_{arch}"]


# label -> (pip --platform tags, the environment markers' values there)
TARGETS = {
    "Linux x86_64": (manylinux("x86_64"), {"sys_platform": "linux", "platform_system": "Linux",
                                           "platform_machine": "x86_64", "os_name": "posix"}),
    "Linux aarch64": (manylinux("aarch64"), {"sys_platform": "linux", "platform_system": "Linux",
                                             "platform_machine": "aarch64", "os_name": "posix"}),
    "macOS arm64": (["macosx_14_0_arm64"], {"sys_platform": "darwin", "platform_system": "Darwin",
                                            "platform_machine": "arm64", "os_name": "posix"}),
    "Windows x86_64": (["win_amd64"], {"sys_platform": "win32", "platform_system": "Windows",
                                       "platform_machine": "AMD64", "os_name": "nt"}),
}


def environment(overrides: dict[str, str], python: str) -> dict[str, str]:
    env = default_environment()
    env.update(overrides, python_version=python, python_full_version=f"{python}.0", implementation_name="cpython",
               platform_python_implementation="CPython", platform_release="", platform_version="")
    return env


def onnxcam_requirements(env: dict[str, str], extra: str | None) -> list[str]:
    """onnxcam's requirements (with `extra`'s) that apply in `env`, markers dropped."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    kept = []
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(env):
            requirement.marker = None
            kept.append(str(requirement))
    return kept


def resolve(requirements: list[str], tags: list[str], python: str) -> list[dict]:
    """pip's dry run for that platform: the report's `install` items."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--only-binary=:all:", "--target", str(Path(tmp) / "target"), "--python-version", python,
                   "--implementation", "cp", *(f"--platform={tag}" for tag in tags), "--report", str(report),
                   *requirements]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
            raise SystemExit(f"pip could not resolve {' '.join(requirements)}: {' '.join(errors) or result.stderr}")
        return json.loads(report.read_text())["install"]


def marker_warnings(items: list[dict], env: dict[str, str]) -> list[str]:
    """Dependencies of the resolved packages whose marker chooses differently for the target than here."""
    here = default_environment()
    found = []
    for item in items:
        for text in item["metadata"].get("requires_dist", []):
            marker = Requirement(text).marker
            for extra in ["", *item.get("requested_extras", [])]:
                if marker and marker.evaluate({**env, "extra": extra}) != marker.evaluate({**here, "extra": extra}):
                    found.append(f"{item['metadata']['name']}: {text}")
    return sorted(set(found))


def wheel(item: dict) -> str:
    return item["download_info"]["url"].rsplit("/", 1)[-1]


def name_version(item: dict) -> str:
    return f"{item['metadata']['name']} {item['metadata']['version']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default="3.11", help="the Python version to resolve for (default 3.11)")
    parser.add_argument("--print-only", action="store_true", help="print the table, leave docs/install.md alone")
    args = parser.parse_args()
    rows = [f"What `pip install onnxcam` (its wheel) and `pip install 'onnxcam[cuda]'` install for Python "
            f"{args.python}, resolved by pip's dry run against the package index on {datetime.date.today()} (`python "
            "tools/resolve_platforms.py`; Linux with glibc 2.35, macOS 14):", "",
            "| platform | ONNX Runtime wheel | the other wheels | `[cuda]` adds |", "| --- | --- | --- | --- |"]
    for label, (tags, overrides) in TARGETS.items():
        env = environment(overrides, args.python)
        base = resolve(onnxcam_requirements(env, None), tags, args.python)
        cuda = resolve(onnxcam_requirements(env, "cuda"), tags, args.python)
        for items in (base, cuda):
            names = {item["metadata"]["name"].lower() for item in items}
            if set(RUNTIMES) <= names:
                raise SystemExit(f"{label}: both onnxruntime and onnxruntime-gpu would be installed")
        runtime = [wheel(item) for item in base if item["metadata"]["name"].lower() in RUNTIMES]
        others = sorted(name_version(item) for item in base if item["metadata"]["name"].lower() not in RUNTIMES)
        added = sorted({name_version(item) for item in cuda} - {name_version(item) for item in base})
        for line in marker_warnings(cuda, env):
            print(f"warning: {label}: a marker chooses differently there than on this machine: {line}",
                  file=sys.stderr)
        print(f"{label}: {' '.join(wheel(item) for item in base)}; [cuda] adds: {', '.join(added) or 'nothing'}")
        rows.append(f"| {label} | `{'`, `'.join(runtime)}` | {', '.join(others)} | "
                    f"{', '.join(added) or 'nothing: PyPI has no CUDA build of ONNX Runtime for it'} |")
    text = "\n".join(rows)
    print(text)
    if not args.print_only:
        replace_block(PAGE, START, END, text)


if __name__ == "__main__":
    main()
