"""Writing a generated table into README.md between its two marker lines (the zoo's and the platforms' tables)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_block(start: str, end: str, text: str) -> None:
    """README.md with `text` between the lines `start` and `end` (SystemExit when the markers are missing)."""
    content = README.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(content):
        raise SystemExit(f"README.md has no {start} ... {end} block")
    README.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content))
