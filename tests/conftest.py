"""Shared fixtures: exported graphs are built once per session and reused by every test. Exporting needs torch:
the tests that use `exported` skip without it, the runner's other tests run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from onnxcam.exporter.export import ExportResult
    from onnxcam.exporter.sources import LoadedModel


class ExportCache:
    def __init__(self, root: Path):
        self.root, self.done = root, {}

    def __call__(self, spec: str, layer: str = "auto", input_size: tuple[int, int] | None = None, **options
                 ) -> tuple[LoadedModel, ExportResult]:
        key = (spec, layer, input_size, tuple(sorted(options.items())))
        if key not in self.done:
            import torch
            from onnxcam.exporter.export import export_explain_graph
            from onnxcam.exporter.sources import load_model
            from onnxcam.runner.size import Size

            torch.manual_seed(0)
            loaded = load_model(spec)
            if input_size:
                loaded.input_size = Size(*input_size)
            name = f"{spec.replace(':', '-').replace('.', '-')}-{layer}-{len(self.done)}.onnx"
            self.done[key] = (loaded, export_explain_graph(loaded, layer, self.root / name, log=lambda _: None,
                                                           **options))
        return self.done[key]


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> ExportCache:
    pytest.importorskip("torch", reason="exporting needs torch (pip install -e '.[export]')")
    return ExportCache(tmp_path_factory.mktemp("exports"))
