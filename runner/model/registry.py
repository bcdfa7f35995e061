"""The model backends a manifest may name (`runtime.backend`): the registry, like METHODS. A backend is one class with
a `run` method (model/backend.py's protocol) plus one entry here saying what it accepts and serves, so the manifest
reader, `open_backend` and the Ray plan ask the entry instead of testing a backend's name.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from onnxcam.runner.model.backend import ORT_NAMES, Backend, ModelError, OnnxRuntimeBackend


@dataclass(frozen=True)
class BackendKind:
    open: Callable[..., Backend]  # (path, providers, output_sets, precision, cores, workers) -> the backend
    label: str  # what runs the model, for the first line before the backend has said (a Ray driver's)
    providers: tuple[str, ...] = ()  # runtime.providers it accepts (ONNX Runtime's execution providers); () none
    precisions: tuple[str, ...] = ("auto", "f32")  # runtime.precision values it serves
    gpu: bool = False  # runs on GPUs too (a Ray cluster's GPU nodes get GPU actors)
    ray_actors: bool = True  # runs inside Ray actors (--ray)
    package: str = ""  # the optional package it needs ("" none)
    extra: str = ""  # the pip extra that brings that package

    def check_installed(self, name: str) -> None:
        """ModelError naming the extra to install when the package this backend needs is missing."""
        if self.package and importlib.util.find_spec(self.package) is None:
            raise ModelError(f"runtime.backend: {name} needs {self.package}, an optional extra: "
                             f"pip install 'onnxcam[{self.extra}]'")

    def planned_precision(self, requested: str) -> str:
        """What it computes in as far as known before it runs: `auto` is decided by the backend on its hardware
        (a Ray actor's), except where the backend has one choice for it (ONNX Runtime: f32 on the CPU)."""
        return requested if requested != "auto" or "bf16" in self.precisions else "f32"


def _onnxruntime(path: Path, providers: str | list[str], output_sets: Iterable[tuple[str, ...]], precision: str,
                 cores: int, workers: int) -> Backend:
    return OnnxRuntimeBackend(path, providers, output_sets, threads=cores, precision=precision)


def _openvino(path: Path, providers: str | list[str], output_sets: Iterable[tuple[str, ...]], precision: str,
              cores: int, workers: int) -> Backend:
    from onnxcam.runner.model.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(path, output_sets, precision, cores, workers)


BACKENDS: dict[str, BackendKind] = {
    "onnxruntime": BackendKind(_onnxruntime, "ONNX Runtime", providers=tuple(ORT_NAMES), gpu=True),
    "openvino": BackendKind(_openvino, "OpenVINO CPU", precisions=("auto", "f32", "bf16"), package="openvino",
                            extra="openvino"),
}


def open_backend(path: Path, backend: str = "onnxruntime", *, providers: str | list[str] = "auto",
                 output_sets: Iterable[tuple[str, ...]] = (), precision: str = "auto", cores: int = 0,
                 workers: int = 4) -> Backend:
    """The backend the manifest's runtime section names. `cores`: OpenVINO's CPUs (0: all this process sees; less
    those kept for the `workers` read and write threads), ONNX Runtime's intra-op threads (0: its default)."""
    kind = BACKENDS[backend]
    kind.check_installed(backend)
    return kind.open(path, providers, output_sets, precision, cores, workers)
