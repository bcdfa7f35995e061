"""One ONNX Runtime session over the explain graph: provider choice, output pruning, IO binding on CUDA."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
from onnxcam.runner.explain_graph import INPUTS

ORT_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class ModelError(ValueError):
    """The model file cannot serve this run (one line naming the fix)."""


def _cuda_unavailable_reason() -> str | None:
    if ORT_NAMES["cuda"] not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}) has no CUDA provider; pip install onnxruntime-gpu"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    return None


def _pruned(path: Path, outputs: list[str]) -> bytes:
    """The graph cut down to `outputs`, so ORT does not compute what the run does not use."""
    model = onnx.load(str(path))
    if [o.name for o in model.graph.output] == outputs:
        return model.SerializeToString()
    inputs = [i.name for i in model.graph.input]
    extracted = onnx.utils.Extractor(model).extract_model(inputs, outputs)
    extracted.metadata_props.extend(model.metadata_props)
    return extracted.SerializeToString()


class ExplainSession:
    """Runs batches of (input, target) through the graph and returns the requested outputs as NumPy arrays."""

    def __init__(self, path: Path, outputs: list[str], providers: str | list[str], threads: int = 0):
        self.outputs = outputs
        wanted = ["cuda", "cpu"] if providers == "auto" else list(providers)
        self.notes: list[str] = []
        if "cuda" in wanted:
            reason = _cuda_unavailable_reason()
            if reason:
                if providers != "auto" and wanted == ["cuda"]:
                    raise ModelError(f"runtime.providers: CUDA requested but unusable: {reason}; add cpu or use auto")
                self.notes.append(f"CUDA not used: {reason}")
                wanted.remove("cuda")
            elif hasattr(ort, "preload_dlls"):
                ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* pip packages, when installed
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(_pruned(path, outputs), options,
                                                providers=[ORT_NAMES[p] for p in wanted])
        except Exception as error:  # noqa: BLE001 - ORT raises several types for a bad model file
            raise ModelError(f"{path}: ONNX Runtime cannot load it ({str(error).splitlines()[0]})") from None
        self.provider = self.session.get_providers()[0]
        if "cuda" in wanted and self.provider != ORT_NAMES["cuda"]:
            self.notes.append("CUDA provider failed to initialise; running on CPU")
        self.io_binding = self.provider == ORT_NAMES["cuda"]

    def run(self, batch: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        feeds = dict(zip(INPUTS, (batch, targets.astype(np.int64)), strict=True))
        if not self.io_binding:
            return dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.outputs, binding.copy_outputs_to_cpu(), strict=True))
