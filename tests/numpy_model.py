"""A model written in NumPy for runner tests (no export, no ONNX Runtime), and a graph file carrying its metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxcam.runner.model.graph import GraphInfo, Preprocessing

SIZE, GRID, CLASSES = 32, 4, 6


class NumpyModel:
    """A GAP->linear classifier over a 4x4 grid: A = the input averaged over 8x8 cells [N,3,4,4],
    logits = W . mean(A), so dS/dA = W[target] / 16 everywhere. Counts the batches it runs."""

    provider, precision, notes = "numpy", "f32", []

    def __init__(self):
        self.weights = np.random.default_rng(0).normal(0, 1, (CLASSES, 3)).astype(np.float32)
        self.batches: list[int] = []

    def run(self, outputs, inputs, targets):
        self.batches.append(len(inputs))
        n = len(inputs)
        activations = inputs.reshape(n, 3, GRID, SIZE // GRID, GRID, SIZE // GRID).mean(axis=(3, 5))
        logits = activations.mean(axis=(2, 3)) @ self.weights.T
        chosen = np.where(targets < 0, logits.argmax(axis=1), targets)
        gradients = np.broadcast_to(self.weights[chosen][:, :, None, None] / GRID**2, activations.shape)
        found = {"logits": logits, "activations": activations, "gradients": np.ascontiguousarray(gradients)}
        return {name: found[name] for name in outputs}


def graph_info() -> GraphInfo:
    return GraphInfo(Preprocessing(size=(SIZE, SIZE), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
                     labels=[f"class {k}" for k in range(CLASSES)], target_layer="grid",
                     activation_shape=(3, GRID, GRID), output_activation="softmax",
                     outputs=["logits", "activations", "gradients"], gap_linear_head=True, model="numpy")


def metadata_only_graph(path: Path) -> Path:
    """An ONNX file that carries the explain-graph metadata and nothing to run: the NumPy model runs instead."""
    node = helper.make_node("Identity", ["target"], ["logits"])
    value = helper.make_tensor_value_info
    graph = helper.make_graph([node], "metadata-only", [value("target", TensorProto.INT64, [None])],
                              [value("logits", TensorProto.INT64, [None])])
    model = helper.make_model(graph)
    helper.set_model_props(model, graph_info().to_metadata())
    onnx.save(model, path)
    return path
