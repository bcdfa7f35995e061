"""Shared fixtures: exported graphs are built once per session and reused by every test."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="exporter tests need torch (pip install -e '.[export]')")

from onnxcam.exporter.export import ExportResult, export_explain_graph  # noqa: E402
from onnxcam.exporter.sources import LoadedModel, load_model  # noqa: E402


class ExportCache:
    def __init__(self, root: Path):
        self.root, self.done = root, {}

    def __call__(self, spec: str, layer: str = "auto", **options) -> tuple[LoadedModel, ExportResult]:
        key = (spec, layer, tuple(sorted(options.items())))
        if key not in self.done:
            torch.manual_seed(0)
            loaded = load_model(spec)
            name = f"{spec.replace(':', '-').replace('.', '-')}-{layer}-{len(self.done)}.onnx"
            self.done[key] = (loaded, export_explain_graph(loaded, layer, self.root / name, log=lambda _: None,
                                                           **options))
        return self.done[key]


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> ExportCache:
    return ExportCache(tmp_path_factory.mktemp("exports"))
