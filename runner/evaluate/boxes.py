"""Object boxes for the pointing game: the boxes CSV, read once per run."""

from __future__ import annotations

import csv
from pathlib import Path

from onnxcam.runner.targets import class_index

ObjectBox = tuple[float, float, float, float, int | None]  # x0, y0, x1, y1 in original pixels, class or None


def read_boxes(path: Path, labels: list[str]) -> dict[str, list[ObjectBox]]:
    """image,x0,y0,x1,y1[,class] rows (header optional), in original image pixels; class by index or name."""
    boxes: dict[str, list[ObjectBox]] = {}
    with open(path, encoding="utf-8", newline="") as rows:
        for number, row in enumerate(csv.reader(rows), start=1):
            if not row or row[0].startswith("#"):
                continue
            if number == 1 and row[0].strip().lower() in ("image", "path", "file"):
                continue
            where = f"evaluate.boxes: {path}:{number}"
            if len(row) not in (5, 6):
                raise ValueError(f"{where}: expected image,x0,y0,x1,y1[,class], got {len(row)} fields")
            try:
                x0, y0, x1, y1 = (float(value) for value in row[1:5])
            except ValueError:
                raise ValueError(f"{where}: box corners must be numbers, got {row[1:5]}") from None
            if x1 < x0 or y1 < y0:
                raise ValueError(f"{where}: expected x0 <= x1 and y0 <= y1, got {row[1:5]}")
            klass = class_index(row[5].strip(), labels, where) if len(row) == 6 and row[5].strip() else None
            boxes.setdefault(row[0].strip().replace("\\", "/"), []).append((x0, y0, x1, y1, klass))
    return boxes
