"""Writing an explain graph (torch-free, shared by both model sources): staged in a hidden folder beside the
target, checked there, then published with one rename, so a failed export leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxcam.exporter.errors import ExportError
from onnxcam.runner.model.graph import external_data_path

EXTERNAL_DATA_BYTES = 1 << 30


@contextlib.contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A hidden folder beside `out` (same file system, so publishing is a rename), removed afterwards."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def stage(proto: onnx.ModelProto, path: Path) -> Path:
    """Write the graph into the staging folder; weights over EXTERNAL_DATA_BYTES go to `<name>.data` beside it.

    One protobuf cannot exceed 2 GB, so vit_h_14 or regnet_y_128gf (2.5 GB of float32 weights) only save with
    their weights in a side file. Leaves `proto` holding references to that file, not the weights.
    """
    weights = sum(len(tensor.raw_data) for tensor in proto.graph.initializer)
    if weights <= EXTERNAL_DATA_BYTES:
        onnx.save(proto, str(path))
    else:
        onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=external_data_path(path).name, size_threshold=1024)
        os.chmod(external_data_path(path), path.stat().st_mode)  # onnx creates it owner-only; share it as the graph
    return path


def check_session(model: Path | bytes) -> ort.InferenceSession:
    """A CPU session on a staged graph; a graph ONNX Runtime cannot load is an ExportError."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ONNX Runtime's optimiser notes (constant folding skipped) are not for the user
    options.enable_cpu_mem_arena = False  # the arena grows in powers of two: vit_h_14's check no longer fits 23 GB
    try:
        return ort.InferenceSession(str(model) if isinstance(model, Path) else model, options,
                                    providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ORT raises several types for a graph it cannot load
        detail = " ".join(str(error).split())[:200]
        raise ExportError(f"ONNX Runtime cannot load the exported graph ({detail}); pick another --layer, or report "
                          "the model to onnxcam") from None


def run_staged(path: Path, *inputs: np.ndarray) -> list[np.ndarray]:
    """Every output of the staged graph on `inputs`, in its inputs' order (input, target[, target_mask])."""
    session = check_session(path)
    return session.run(None, {value.name: array for value, array in zip(session.get_inputs(), inputs, strict=True)})


def publish(staging: Path, out: Path) -> None:
    """Move the staged graph (and its weights file, if any) to `out`; the graph lands last, in one rename."""
    data = external_data_path(out)
    if (staging / data.name).exists():
        os.replace(staging / data.name, data)
    else:
        data.unlink(missing_ok=True)  # an earlier, larger export's weights: nothing refers to them now
    os.replace(staging / out.name, out)
