"""Writing a generated table into a page of the docs between its two marker lines (the zoo's table in docs/models.md,
the platforms' in docs/install.md)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def replace_block(page: Path, start: str, end: str, text: str) -> None:
    """`page` with `text` between the lines `start` and `end` (SystemExit when the markers are missing)."""
    content = page.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(content):
        raise SystemExit(f"{page.relative_to(ROOT)} has no {start} ... {end} block")
    page.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content))
