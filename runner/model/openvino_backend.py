"""The OpenVINO backend (`runtime.backend: openvino`): the explain graph on the CPU through OpenVINO, f32 or bf16.

The interface is the ONNX Runtime backend's (`model/backend.py`): `run(outputs, inputs, targets)` with one compiled
model per set of outputs asked for, each the graph cut down to that set (a model built from those outputs alone holds
only the nodes they depend on, so a pass that needs `logits` runs no backward op), and `forward_values` for CNN
fixations. Outputs come back as float32 arrays whatever the precision.

Precision (`runtime.precision`): auto is bf16 where the CPU computes bf16 natively (OpenVINO lists BF16 among the
CPU's optimisation capabilities: AVX512-BF16 or AMX), f32 elsewhere; bf16 on a CPU without it is refused.

Threads: the explain stage runs one batch at a time, so one stream; its threads are the process's cores less those
kept for decoding and writing (`model_threads`), not pinned to cores, so the read and write threads run wherever the
model's wait.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import openvino as ov
from onnxcam.runner.model.backend import ModelError, feeds
from onnxcam.runner.model.forward import ForwardGraph, forward_graph
from onnxcam.runner.model.graph import INPUTS, read_graph_info

TYPES = {"f32": ov.Type.f32, "bf16": ov.Type.bf16}


def native_bf16(core: ov.Core) -> bool:
    """Whether this CPU computes bf16 natively (where OpenVINO itself defaults to bf16)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, where the system says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_threads(cores: int, workers: int) -> int:
    """OpenVINO's threads: the cores less min(workers, a quarter of them), which are left to the read and write pools.
    On 2 or 3 cores the model gets them all: it is most of the work, and the pools' threads mostly wait on it."""
    return max(1, cores - min(workers, cores // 4))


class OpenVinoBackend:
    """`cores`: the CPUs this process may use (0: all it sees; a Ray actor passes its share); `workers`: the manifest's
    read and write threads per pool. The output sets named at construction are compiled at once, so a file OpenVINO
    cannot compile fails before any work starts. One caller at a time (the batch stage), as inference requests are
    not shared between threads."""

    def __init__(self, path: Path, output_sets: Iterable[tuple[str, ...]] = (), precision: str = "auto",
                 cores: int = 0, workers: int = 4):
        self.path = path
        self.core = ov.Core()
        native = native_bf16(self.core)
        if precision == "bf16" and not native:
            raise ModelError("runtime.precision: bf16, and this CPU has no native bf16 (OpenVINO would emulate it "
                             "slower than f32); use auto or f32")
        self.precision = precision if precision != "auto" else "bf16" if native else "f32"
        self.threads = model_threads(min(cores or available_cores(), available_cores()), workers)
        self.provider = "OpenVINO CPU"
        why = f" ({'the CPU has native bf16' if native else 'no native bf16 on this CPU'}; runtime.precision: auto)"
        self.notes = [f"OpenVINO {ov.get_version().split('-')[0]} runs {self.precision}"
                      f"{why if precision == 'auto' else ''}, {self.threads} threads in one stream"]
        try:
            self._model = self.core.read_model(str(path))
        except RuntimeError as error:
            raise ModelError(f"{path}: OpenVINO cannot read it ({_first_line(error)})") from None
        info = read_graph_info(path)
        self.segmenter = info.task == "segmentation"
        if info.input_format == "uint8":
            raise ModelError(f"{path} takes uint8 pixels (onnxcam convert --uint8-input, for GPUs); OpenVINO runs the "
                             "float-input graph: use the graph as exported")
        self._results = {name: output.node for output in self._model.outputs for name in output.get_names()}
        self._requests: dict[tuple[str, ...], ov.InferRequest] = {}
        self._forward: tuple[ForwardGraph, ov.InferRequest] | None = None
        for outputs in output_sets:
            self._request(tuple(outputs))

    def _compile(self, model: ov.Model) -> ov.InferRequest:
        properties = {ov.properties.hint.inference_precision: TYPES[self.precision],
                      ov.properties.num_streams: 1,
                      ov.properties.inference_num_threads: self.threads,
                      ov.properties.hint.enable_cpu_pinning: False}
        try:
            return self.core.compile_model(model, "CPU", properties).create_infer_request()
        except RuntimeError as error:
            raise ModelError(f"{self.path}: OpenVINO cannot compile it ({_first_line(error)})") from None

    def _request(self, outputs: tuple[str, ...]) -> ov.InferRequest:
        if outputs not in self._requests:
            missing = [name for name in outputs if name not in self._results]
            if missing:
                raise ModelError(f"{self.path} has no output {', '.join(missing)}")
            cut = ov.Model([self._results[name] for name in outputs], self._model.get_parameters(), "+".join(outputs))
            self._requests[outputs] = self._compile(cut)
        return self._requests[outputs]

    def run(self, outputs: tuple[str, ...], inputs: np.ndarray, targets: np.ndarray,
            masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        request = self._request(tuple(outputs))
        values = request.infer(feeds(inputs, targets, masks, self.segmenter)).to_tuple()
        return dict(zip(outputs, values, strict=True))

    def forward_values(self, inputs: np.ndarray) -> tuple[ForwardGraph, dict[str, np.ndarray]]:
        """The forward graph and every intermediate float tensor of its pass over `inputs` (CNN fixations)."""
        if self._forward is None:
            graph = forward_graph(self.path)
            try:  # from memory: OpenVINO then cannot find weights kept in a side file (the exporter's, over 1 GB)
                model = self.core.read_model(graph.augmented())
            except RuntimeError as error:
                raise ModelError(f"{self.path}: OpenVINO cannot read the forward graph fixations run "
                                 f"({_first_line(error)}); with weights in a side file, run fixations on ONNX Runtime "
                                 "(runtime.backend: onnxruntime)") from None
            self._forward = (graph, self._compile(model))
        graph, request = self._forward
        names = ["logits", *graph.returned]
        return graph, dict(zip(names, request.infer({INPUTS[0]: inputs}).to_tuple(), strict=True))


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
