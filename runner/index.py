"""index.csv: one row per (image, target, method), appended image by image, and the resume logic.

All rows of one image go out in a single unbuffered write, so a crash leaves whole images (and at
worst one torn last line, which resuming drops). On resume an image counts as done when its rows are
an error row, a no-target row, or every manifest method for every target; anything else is redone.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path

from onnxcam.runner.faithfulness import COLUMNS as METRIC_COLUMNS

COLUMNS = ("image", "status", "error", "width", "height", "pred_class", "pred_label", "pred_score",
           "target_class", "target_label", "target_score", "method", "heatmap_path", "overlay_path",
           "peak_x", "peak_y", *METRIC_COLUMNS)


def _complete(rows: list[dict[str, str]], methods: list[str]) -> bool:
    if any(row["status"] in ("error", "no_target") for row in rows):
        return len(rows) == 1
    by_target: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_target[row["target_class"]].append(row["method"])
    return all(sorted(found) == sorted(methods) for found in by_target.values())


class IndexFile:
    def __init__(self, path: Path, methods: list[str]):
        self.path, self.done, self.kept_rows = path, set(), 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._resume(methods)
        else:
            self._write_all([])
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 - held open for the whole run

    def _resume(self, methods: list[str]) -> None:
        data = self.path.read_bytes()
        torn = not data.endswith(b"\n") and bool(data)
        text = data[:data.rfind(b"\n") + 1] if torn else data
        reader = csv.DictReader(io.StringIO(text.decode("utf-8"), newline=""))
        if reader.fieldnames is None:
            self._write_all([])
            return
        if tuple(reader.fieldnames) != COLUMNS:
            raise ValueError(f"{self.path}: not an onnxcam index (columns differ); move it away or pick another "
                             "output.dir")
        groups: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in reader:
            groups[row["image"]].append(row)
        kept = [rows for rows in groups.values() if _complete(rows, methods)]
        self.done = {rows[0]["image"] for rows in kept}
        self.kept_rows = sum(len(rows) for rows in kept)
        if torn or len(kept) != len(groups):
            self._write_all([row for rows in kept for row in rows])

    def _write_all(self, rows: list[dict[str, str]]) -> None:
        partial = self.path.with_name(f".{self.path.name}.partial")
        with open(partial, "w", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, self.path)

    def append(self, rows: list[dict[str, object]]) -> None:
        buffer = io.StringIO(newline="")
        csv.DictWriter(buffer, COLUMNS).writerows(rows)
        self.file.write(buffer.getvalue().encode("utf-8"))

    def close(self) -> None:
        os.fsync(self.file.fileno())
        self.file.close()
