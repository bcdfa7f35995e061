"""The run stamp, output.dir/.onnxcam-run.json: what a run that resumes the folder must share with the one
that wrote it (the output layout, the model file, the targets, the evaluate settings, the options of every method
both have)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from onnxcam.runner.config import SEGMENTATION_TARGETS, Manifest
from onnxcam.runner.outputs.files import OutputDirError, write_atomic
from onnxcam.runner.outputs.index import LAYOUT

STAMP_NAME = ".onnxcam-run.json"
WHAT_DIFFERS = {"layout": "another output layout (an earlier onnxcam)", "model_sha256": "another model file",
                "targets": "other targets", "evaluate": "other evaluate settings",
                "heatmaps": "other output.heatmaps.size"}


def run_identity(manifest: Manifest) -> dict[str, str]:
    digest = hashlib.sha256()
    with open(manifest.model, "rb") as model:
        for block in iter(lambda: model.read(1 << 20), b""):
            digest.update(block)
    targets, evaluation = manifest.targets, manifest.evaluate
    chosen = {"kind": targets.kind, "k": targets.k, "classes": targets.classes, "threshold": targets.threshold,
              "labels": str(targets.labels_file or "")}
    if targets.kind in SEGMENTATION_TARGETS:  # (a classifier's stamp stays as it was)
        chosen |= {"min_area": targets.min_area, "ignore_classes": targets.ignore_classes,
                   "masks": str(targets.masks_dir or ""), "ignore_index": targets.ignore_index}
    return {"layout": LAYOUT, "model_sha256": digest.hexdigest(), "targets": json.dumps(chosen),
        "evaluate": json.dumps(evaluation and {"metrics": evaluation.metrics, "boxes": str(evaluation.boxes)}),
        "heatmaps": manifest.heatmaps.size, "methods": json.dumps(manifest.methods)}


def check_stamp(folder: Path, identity: dict[str, str]) -> None:
    """Refuses (OutputDirError) a folder whose rows came from a run this one must not mix with. Adding or dropping
    a method is allowed."""
    stamp = folder / STAMP_NAME
    if (folder / "index.csv").exists() and stamp.exists():
        try:
            previous = json.loads(stamp.read_text(encoding="utf-8"))
            before = json.loads(previous.get("methods", "{}"))
            if not isinstance(before, dict):
                raise TypeError("methods")
        except (OSError, ValueError, AttributeError, TypeError):
            raise OutputDirError(f"output.dir: {stamp} is damaged; delete the folder to start over, or pick a new "
                                 "output.dir") from None
        changed = [WHAT_DIFFERS[key] for key in WHAT_DIFFERS if previous.get(key) != identity[key]]
        now = json.loads(identity["methods"])
        changed += [f"other {name} options" for name, options in now.items()
                    if name in before and before[name] != options]
        if changed:
            raise OutputDirError(f"output.dir: {folder} holds a run with {changed[0]}; resuming would mix them: pick "
                                 "a new output.dir, or delete that one to start over")


def write_stamp(folder: Path, identity: dict[str, str]) -> None:
    try:
        write_atomic(folder / STAMP_NAME, json.dumps(identity).encode())
    except OSError as error:
        raise OutputDirError(f"output.dir: {folder / STAMP_NAME}: cannot write it ({error.strerror or error}); free "
                             "space or pick a folder you can write to") from None
