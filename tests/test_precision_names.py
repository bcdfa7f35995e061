"""One set of precision names (config.PRECISIONS: f32, f16, bf16, tf32): graphs exported when the metadata said fp32 and
fp16 read as f32 and f16, new graphs say f32 and f16, and the manifest asks only for names of that set (or auto)."""

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


def test_new_graphs_write_the_names_of_the_one_set():
    assert json.loads(GraphInfo.from_metadata(metadata("fp16")).to_metadata()["precision"]) == "f16"
    assert GraphInfo.precision in PRECISIONS


def test_every_backend_serves_names_of_the_one_set():
    for name, kind in BACKENDS.items():
        assert set(kind.precisions) <= {"auto", *PRECISIONS}, name
