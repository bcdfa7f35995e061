"""Which classes to explain for each image.

`top1`, `classes` and `labels` are known before the forward pass. `topk` and `threshold` need the
scores: the image first runs with target -1 (the graph's top-1), then once more per further class.

A segmenter's targets (graph task "segmentation") are regions: `present` (its default) explains every class the
model predicts on at least `min_area` of the pixels, found as `topk` finds its classes (the -1 pass, a segmenter's
class predicted on most pixels, reports the share of every class); `masks` explains the classes of the image's
label image, each over its given mask; `classes`, `labels` and `top1` explain the named class over the pixels
predicted as it. Background (a class labelled `__background__` or `background`) is left out unless
`ignore_classes` says otherwise.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from onnxcam.runner.config import (
    BACKGROUND_LABELS,
    CLASSIFICATION_TARGETS,
    SEGMENTATION_TARGETS,
    ManifestError,
    Targets,
)

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


def ignored_classes(targets: Targets, labels: list[str]) -> set[int]:
    """The classes `present` and `masks` leave out: those listed, or by default the one labelled background."""
    if targets.ignore_classes is None:
        return {k for k, label in enumerate(labels) if label.lower() in BACKGROUND_LABELS}
    key = f"targets.{targets.kind}.ignore_classes"
    return {class_index(c, labels, key) for c in targets.ignore_classes}


def chosen_targets(targets: Targets, task: str) -> Targets:
    """The manifest's targets, or where it names none the task's default: top1 for a classifier, present for a
    segmenter."""
    return Targets("present") if task == "segmentation" and targets.default else targets


class TargetPlan:
    def __init__(self, targets: Targets, labels: list[str], output_activation: str, task: str = "classification"):
        self.segmenter = task == "segmentation"
        targets = chosen_targets(targets, task)
        if self.segmenter and targets.kind in CLASSIFICATION_TARGETS:
            raise ManifestError(f"targets.{targets.kind}: ranks a classifier's scores, and this model is a segmenter; "
                                "use present (every class predicted), classes or masks")
        if not self.segmenter and targets.kind in SEGMENTATION_TARGETS:
            raise ManifestError(f"targets.{targets.kind}: explains regions of a segmenter's output, and this model is "
                                "a classifier; use top1, topk, classes, labels or threshold")
        if targets.kind == "threshold" and output_activation != "sigmoid":
            raise ManifestError("targets.threshold: needs a multi-label (sigmoid) model; this one is softmax, "
                                "use top1 or topk, or export with --multilabel")
        self.targets = targets
        self.classes = [class_index(c, labels, "targets.classes") for c in targets.classes]
        self.per_image = read_labels_csv(targets.labels_file, labels) if targets.kind == "labels" else {}
        self.ignored = ignored_classes(targets, labels) if targets.kind in SEGMENTATION_TARGETS else set()

    @property
    def needs_scores(self) -> bool:
        return self.targets.kind in ("topk", "threshold", "present")

    @property
    def given_masks(self) -> bool:
        """Whether rows are explained over given masks (the image's label image) rather than predicted regions."""
        return self.targets.kind == "masks"

    def initial(self, key: str, label: np.ndarray | None = None) -> list[int]:
        """Targets to run first; raises KeyError for an image the labels file does not name. `label`: the image's
        label image (targets.masks), whose classes are its targets."""
        if self.targets.kind == "classes":
            return list(self.classes)
        if self.targets.kind == "labels":
            return [self.per_image[key]]
        if self.targets.kind == "masks":
            return [int(c) for c in np.unique(label) if c != self.targets.ignore_index and c not in self.ignored]
        return [TOP1]

    def follow_up(self, scores: np.ndarray) -> tuple[bool, list[int]]:
        """After the top-1 pass: whether to keep the top-1 result, and which further classes to run (`scores`: a
        segmenter's class shares, with `present`)."""
        if self.targets.kind == "topk":
            return True, [int(c) for c in np.argsort(-scores, kind="stable")[1:self.targets.k]]
        present = self.targets.kind == "present"  # else threshold; self.ignored is empty but for a segmenter's
        least = self.targets.min_area if present else self.targets.threshold
        chosen = [int(c) for c in np.argsort(-scores, kind="stable")
                  if scores[c] >= least and (scores[c] > 0 or not present) and c not in self.ignored]
        top = int(np.argmax(scores))
        return top in chosen, [c for c in chosen if c != top]
