"""One set of precision names (config.PRECISIONS: f32, f16, bf16, tf32): a graph file's metadata keeps its own
spelling (fp32, fp16: files stay byte for byte as they were, and every runner reads them), read as f32 and f16; the
backends serve names of that set (or auto)."""

from __future__ import annotations

import json

import pytest
from onnxcam.runner.config import PRECISIONS
from onnxcam.runner.model.graph import GraphInfo, Preprocessing
from onnxcam.runner.model.registry import BACKENDS


def metadata(precision: str | None) -> dict[str, str]:
    info = GraphInfo(Preprocessing((8, 8), (0.5,) * 3, (0.5,) * 3), ["a", "b"], "layer", (4, 2, 2), "softmax",
                     ["logits"], True, "toy")
    props = info.to_metadata()
    if precision is None:
        del props["precision"]  # the first explain graphs had no precision at all
    else:
        props["precision"] = json.dumps(precision)
    return props


@pytest.mark.parametrize("written,read", [("fp32", "f32"), ("fp16", "f16"), ("f32", "f32"), ("f16", "f16"),
                                          (None, "f32")])
def test_graph_metadata_reads_old_and_new_names(written, read):
    assert GraphInfo.from_metadata(metadata(written)).precision == read


def test_graphs_keep_the_file_spelling():
    assert json.loads(GraphInfo.from_metadata(metadata("fp16")).to_metadata()["precision"]) == "fp16"
    assert json.loads(GraphInfo.from_metadata(metadata("f32")).to_metadata()["precision"]) == "fp32"
    assert GraphInfo.precision in PRECISIONS


def test_every_backend_serves_names_of_the_one_set():
    for name, kind in BACKENDS.items():
        assert set(kind.precisions) <= {"auto", *PRECISIONS}, name
