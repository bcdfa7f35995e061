"""Class names from a file (`--labels`), for both model sources."""

from __future__ import annotations

import json
from pathlib import Path

from onnxcam.exporter.errors import ExportError


def read_labels(path: Path) -> list[str]:
    """One label per line, or a JSON list."""
    if not path.is_file():
        raise ExportError(f"--labels {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        labels = json.loads(text)
        if not isinstance(labels, list):
            raise ExportError(f"--labels {path}: expected a JSON list of names")
        return [str(label) for label in labels]
    return [line.strip() for line in text.splitlines() if line.strip()]
