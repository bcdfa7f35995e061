"""run.json: what a run did (counts, speed, provider, errors, costs) and with what (manifest, model, versions)."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import onnxruntime as ort
from onnxcam.runner import __version__
from onnxcam.runner.config import Manifest
from onnxcam.runner.costs import Costs
from onnxcam.runner.engines import Engine
from onnxcam.runner.model.graph import GraphInfo
from onnxcam.runner.outputs.files import write_atomic
from onnxcam.runner.targets import chosen_targets


@dataclass
class Tally:
    """What a run did, for the last line and run.json."""

    images: int = 0
    ok: int = 0
    errors: int = 0
    rows: int = 0
    regions: int = 0  # a segmenter's (image, class) pairs explained
    already_done: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    costs: Costs = field(default_factory=Costs)
    error_samples: list[dict[str, str]] = field(default_factory=list)
    table: str = ""  # the faithfulness summary, as printed
    started: float = 0.0  # time.time() when the run started
    report_path: str = ""  # report.html's path, or why it could not be written


class RunRecord(Protocol):
    """What run.json reads of a run (run.py's Run)."""

    manifest: Manifest
    info: GraphInfo
    tally: Tally
    output_dir: Path
    engine: Engine
    provider: str
    precision: str
    notes: list[str]


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def write_run_json(run: RunRecord) -> None:
    s, m, costs = run.tally, run.manifest, run.tally.costs
    facts = {
        "manifest": str(m.path), "model": str(m.model), "model_spec": run.info.model,
        "started": _utc(s.started), "finished": _utc(time.time()),
        "images_base": str(m.images_root or m.images_list.parent), "thumbnails": m.thumbnails,
        "target_layer": run.info.target_layer, "methods": m.methods,
        "targets": chosen_targets(m.targets, run.info.task).kind,
        "images": s.images, "ok": s.ok, "errors": s.errors, "rows": s.rows,
        **({"task": run.info.task, "regions": s.regions} if run.info.task == "segmentation" else {}),
        "already_done": s.already_done, "interrupted": s.interrupted,
        "wall_s": round(s.seconds, 3), "model_s": round(costs.model_seconds, 3),
        "images_per_s": round(s.images / s.seconds, 2) if s.seconds else 0.0,
        "provider": run.provider, "precision": run.precision, "provider_notes": run.notes, "batch_size": m.batch_size,
        "workers": m.workers, "error_samples": s.error_samples,
        "evaluate": m.evaluate and {"metrics": m.evaluate.metrics, "boxes": str(m.evaluate.boxes or ""),
                                    "batch_size": m.evaluate.batch_size},
        "cost": costs.as_json(),
        "extra_passes_s": round(costs.extra_pass_seconds, 3),
        **run.engine.facts(),
        "versions": {"onnxcam": __version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
                     "opencv": cv2.__version__, "python": platform.python_version()},
    }
    write_atomic(run.output_dir / "run.json", json.dumps(facts, indent=2).encode())
