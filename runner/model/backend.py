"""The model backend: what the stages need of a model, and its ONNX Runtime implementation (OpenVINO's is
`model/openvino_backend.py`; `model/registry.py` opens the one the manifest names).

A backend runs batches of (`input` [N,3,H,W] float32, `target` [N] int64) through the explain graph and
returns the outputs asked for, by name, as NumPy arrays. A segmenter's graph also takes `target_mask` (`masks`: None
feeds graph.PREDICTED_MASK, four bytes; else [N,H,W] float32, negative where a row takes its predicted region).
The stages call nothing else, so another runtime (or a NumPy model in the tests) is one class with a `run` method,
a `provider` name, its `precision` and `notes`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
from onnxcam.runner.model.cuda import cuda_unavailable
from onnxcam.runner.model.forward import ForwardGraph, forward_graph
from onnxcam.runner.model.graph import FLOAT_INPUT, INPUTS, PREDICTED_MASK, TARGET_MASK, read_graph_info

ORT_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class ModelError(ValueError):
    """The model file cannot serve this run (one line naming the fix)."""


class Backend(Protocol):
    provider: str  # what runs the model, as reported on the first line and in run.json
    precision: str  # what it computes in (one of config.PRECISIONS), reported beside the provider
    notes: list[str]  # why it runs there (e.g. why not CUDA), printed before the run

    def run(self, outputs: tuple[str, ...], inputs: np.ndarray, targets: np.ndarray,
            masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The named outputs of the explain graph for one batch (`masks`: a segmenter's target_mask, or None for
        the predicted regions; a classifier's callers never pass it)."""
        ...

    # CNN fixations also call `forward_values(inputs) -> (ForwardGraph, {name: array})`, which the ONNX Runtime and
    # OpenVINO backends have; another backend's batches then become error rows naming the missing method.


def feeds(inputs: np.ndarray, targets: np.ndarray, masks: np.ndarray | None, segmenter: bool) -> dict[str, np.ndarray]:
    """The graph's inputs for one batch: a segmenter's get `target_mask` too (the predicted regions unless given)."""
    values = dict(zip(INPUTS, (inputs, targets.astype(np.int64)), strict=True))
    if segmenter:
        values[TARGET_MASK] = PREDICTED_MASK if masks is None else masks.astype(np.float32, copy=False)
    return values


def pruned_graph(path: Path, outputs: tuple[str, ...], from_float: bool = False) -> bytes:
    """The graph cut down to `outputs`, so ORT does not compute what the run does not use; with `from_float`, cut
    at a uint8-input graph's float input too (the extra passes feed edited float inputs).

    Weights in a side file (a graph over 2 GB) stay there: the cut graph refers to them, and the session is
    told the folder to find them in.
    """
    model = onnx.load(str(path), load_external_data=False)
    if tuple(o.name for o in model.graph.output) == outputs and not from_float:
        return model.SerializeToString()
    inputs = [FLOAT_INPUT if from_float and i.name == INPUTS[0] else i.name for i in model.graph.input]
    extracted = onnx.utils.Extractor(model).extract_model(inputs, list(outputs))
    if from_float:
        extracted.graph.input[0].name = INPUTS[0]
        for node in extracted.graph.node:
            node.input[:] = [INPUTS[0] if name == FLOAT_INPUT else name for name in node.input]
    extracted.metadata_props.extend(model.metadata_props)
    return extracted.SerializeToString()


class OnnxRuntimeBackend:
    """One ORT session per set of outputs asked for, each over the graph cut down to that set (the extra
    passes that need only `logits` do not pay for backward ops). The sets named at construction get their
    sessions at once, so a file ONNX Runtime cannot load fails before any work starts. CUDA runs with IO binding.
    A uint8-input graph takes pixels; float inputs (the extra passes', impressions') go through it cut at its
    float input.

    `precision` (runtime.precision) matters on CUDA only: `auto` lets a float32 graph's convolutions and matrix
    products run in TF32 on tensor cores (as PyTorch's convolutions do by default: about 1e-3 from float32), `f32`
    keeps them in float32. A float16 graph (`onnxcam export --fp16`) computes in float16 whatever the precision.
    `cuda_options`: further options of ONNX Runtime's CUDA provider (the GPU benchmark tries `prefer_nhwc`).
    """

    def __init__(self, path: Path, providers: str | list[str], output_sets: Iterable[tuple[str, ...]] = (),
                 threads: int = 0, precision: str = "auto", cuda_options: dict[str, str] | None = None):
        self.path, self.threads, self.cuda_options = path, threads, cuda_options or {}
        try:
            info = read_graph_info(path)
            self.uint8_input, half = info.input_format == "uint8", info.precision == "f16"
            self.segmenter = info.task == "segmentation"
        except Exception:  # noqa: BLE001 - not an explain graph: its session below fails, saying why
            self.uint8_input = half = self.segmenter = False
        self.notes: list[str] = []
        wanted = ["cuda", "cpu"] if providers == "auto" else list(providers)
        if "cuda" in wanted:
            reason = cuda_unavailable()  # when None, the CUDA libraries are loaded (from the nvidia-* pip packages)
            if reason:
                if providers != "auto" and wanted == ["cuda"]:
                    raise ModelError(f"runtime.providers: CUDA requested but unusable: {reason}; add cpu or use auto")
                self.notes.append(f"CUDA not used: {reason}")
                wanted.remove("cuda")
        self.wanted = wanted
        self._sessions: dict[tuple[tuple[str, ...], bool], ort.InferenceSession] = {}
        self._forward: tuple[ForwardGraph, ort.InferenceSession] | None = None
        self.provider = ORT_NAMES[wanted[0]]
        self.tf32 = precision != "f32" and not half
        self.precision = "f16" if half else "tf32" if self.tf32 and "cuda" in wanted else "f32"
        for outputs in output_sets:
            self._session(tuple(outputs), from_float=False)

    def _options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(self.path.resolve().parent))
        return options

    def _providers(self) -> list[str | tuple[str, dict[str, str]]]:
        cuda = {"use_tf32": "1" if self.tf32 else "0", **self.cuda_options}
        return [(ORT_NAMES[p], cuda) if p == "cuda" else ORT_NAMES[p] for p in self.wanted]

    def forward_values(self, inputs: np.ndarray) -> tuple[ForwardGraph, dict[str, np.ndarray]]:
        """The forward graph and every intermediate float tensor of its pass over `inputs` (CNN fixations)."""
        if self._forward is None:
            graph = forward_graph(self.path)
            session = ort.InferenceSession(graph.augmented(), self._options(),
                                           providers=[ORT_NAMES[p] for p in self.wanted])
            self._forward = (graph, session)
        graph, session = self._forward
        names = ["logits", *graph.returned]
        return graph, dict(zip(names, session.run(names, {"input": inputs}), strict=True))

    def _session(self, outputs: tuple[str, ...], from_float: bool) -> ort.InferenceSession:
        key = (outputs, from_float)
        if key not in self._sessions:
            options = self._options()
            try:
                session = ort.InferenceSession(pruned_graph(self.path, outputs, from_float), options,
                                               providers=self._providers())
            except Exception as error:  # noqa: BLE001 - ORT raises several types for a bad model file
                raise ModelError(f"{self.path}: ONNX Runtime cannot load it ({str(error).splitlines()[0]})") from None
            provider = session.get_providers()[0]
            if not self._sessions:
                self.provider = provider
                if "cuda" in self.wanted and provider != ORT_NAMES["cuda"]:
                    self.precision = "f32" if self.precision == "tf32" else self.precision
                    self.notes.append("CUDA provider failed to initialise; running on CPU (`onnxcam doctor` says why)")
            self._sessions[key] = session
        return self._sessions[key]

    def run(self, outputs: tuple[str, ...], inputs: np.ndarray, targets: np.ndarray,
            masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        session = self._session(tuple(outputs), from_float=self.uint8_input and inputs.dtype != np.uint8)
        values = feeds(inputs, targets, masks, self.segmenter)
        if self.segmenter:  # a cut graph whose outputs do not read the mask has no such input
            values = {input.name: values[input.name] for input in session.get_inputs()}
        if session.get_providers()[0] != ORT_NAMES["cuda"]:
            return dict(zip(outputs, session.run(list(outputs), values), strict=True))
        binding = session.io_binding()
        for name, value in values.items():
            binding.bind_cpu_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.copy_outputs_to_cpu(), strict=True))
