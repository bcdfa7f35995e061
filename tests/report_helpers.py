"""Helpers for report tests: reading report.html's head and the chunks it loads."""

from __future__ import annotations

import json
import re
from pathlib import Path


def read_chunks(out: Path, kind: str = "items") -> list[dict]:
    """The data of report/<kind>-NNNNN.js, in order (each file is `onnxcamChunk(k, {...});`)."""
    chunks = []
    for path in sorted((out / "report").glob(f"{kind}-*.js")):
        match = re.fullmatch(r"onnxcam\w+\((\d+),(.*)\);\n", path.read_text(encoding="utf-8"), re.S)
        assert match, f"{path.name} is not a chunk script"
        assert int(match.group(1)) == int(path.stem.split("-")[1])
        chunks.append(json.loads(match.group(2)))
    return chunks


def read_head(out: Path) -> dict:
    """The JSON head embedded in report.html."""
    page = (out / "report.html").read_text(encoding="utf-8")
    match = re.search(r'<script id="head" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))

