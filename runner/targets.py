"""Which classes to explain for each image.

`top1`, `classes` and `labels` are known before the forward pass. `topk` and `threshold` need the
scores: the image first runs with target -1 (the graph's top-1), then once more per further class.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from onnxcam.runner.config import ManifestError, Targets

TOP1 = -1


def class_index(value: int | str, labels: list[str], where: str) -> int:
    """A class given by index or by name (exact, then case-insensitive)."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        index = int(value)
        if not 0 <= index < len(labels):
            raise ManifestError(f"{where}: class {index} is out of range; the model has {len(labels)} classes "
                                f"(0..{len(labels) - 1})")
        return index
    if value in labels:
        return labels.index(value)
    lowered = [label.lower() for label in labels]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    close = [label for label in labels if value.lower() in label.lower()][:3]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; `onnxcam info MODEL` lists labels"
    raise ManifestError(f"{where}: no class named {value!r}{hint}")


def read_labels_csv(path: Path, labels: list[str]) -> dict[str, int]:
    """image,class rows (a header row is optional); image names as in index.csv (relative paths)."""
    table: dict[str, int] = {}
    with open(path, encoding="utf-8", newline="") as rows:
        for number, row in enumerate(csv.reader(rows), start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise ManifestError(f"targets.labels: {path}:{number}: expected 'image,class', got {row}")
            if number == 1 and row[0].strip().lower() in ("image", "path", "file"):
                continue
            table[row[0].strip().replace("\\", "/")] = class_index(row[1].strip(), labels,
                                                                   f"targets.labels: {path}:{number}")
    return table


class TargetPlan:
    def __init__(self, targets: Targets, labels: list[str], output_activation: str):
        if targets.kind == "threshold" and output_activation != "sigmoid":
            raise ManifestError("targets.threshold: needs a multi-label (sigmoid) model; this one is softmax, "
                                "use top1 or topk, or export with --multilabel")
        self.targets = targets
        self.classes = [class_index(c, labels, "targets.classes") for c in targets.classes]
        self.per_image = read_labels_csv(targets.labels_file, labels) if targets.kind == "labels" else {}

    @property
    def needs_scores(self) -> bool:
        return self.targets.kind in ("topk", "threshold")

    def initial(self, key: str) -> list[int]:
        """Targets to run first; raises KeyError for an image the labels file does not name."""
        if self.targets.kind == "classes":
            return list(self.classes)
        if self.targets.kind == "labels":
            return [self.per_image[key]]
        return [TOP1]

    def follow_up(self, scores: np.ndarray) -> tuple[bool, list[int]]:
        """After the top-1 pass: whether to keep the top-1 result, and which further classes to run."""
        if self.targets.kind == "topk":
            return True, [int(c) for c in np.argsort(-scores, kind="stable")[1:self.targets.k]]
        chosen = [int(c) for c in np.argsort(-scores, kind="stable") if scores[c] >= self.targets.threshold]
        top = int(np.argmax(scores))
        return top in chosen, [c for c in chosen if c != top]
