"""A float64 reference that takes its kink decisions from ONNX Runtime.

Guided (and plain) gradients jump where a ReLU input, a ReLU6 bound or a max-pool comparison is at a
tie. float32 ONNX Runtime and float64 PyTorch settle a near-tie differently now and then, which moves one
receptive-field patch of the input gradient. This reference runs the traced autograd graph (the one
that was converted to ONNX) in float64, except that every comparison (gt/lt/ge/le), argmax and max-pool
index takes ONNX Runtime's own value for the same input. Any remaining difference is then the
conversion's, not tie-breaking's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

_COMPARISONS = ("aten.gt.", "aten.lt.", "aten.ge.", "aten.le.")


def _decision_nodes(graph: torch.fx.GraphModule, onnx_values: set[str]) -> dict[str, int]:
    """FX node name -> ONNX element type, for decision nodes whose value the ONNX graph keeps under that name."""
    found = {}
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.name not in onnx_values:
            continue
        target = str(node.target)
        if target.startswith(_COMPARISONS):
            found[node.name] = TensorProto.BOOL
        elif target.startswith("aten.argmax"):
            found[node.name] = TensorProto.INT64
        elif (target == "<built-in function getitem>" and node.args[1] == 1
              and "max_pool2d_with_indices" in str(getattr(node.args[0], "target", ""))):
            found[node.name] = TensorProto.INT64
    return found


class _FollowDecisions(torch.fx.Interpreter):
    def __init__(self, graph: torch.fx.GraphModule, decisions: dict[str, np.ndarray]):
        super().__init__(graph)
        self.decisions, self.used = decisions, 0

    def run_node(self, node):
        value = super().run_node(node)
        decision = self.decisions.get(node.name)
        if decision is not None and decision.shape == tuple(value.shape):  # the same tensor, not a namesake
            self.used += 1
            return torch.from_numpy(decision).to(value.dtype)
        return value.double() if isinstance(value, torch.Tensor) and value.dtype == torch.float32 else value


class KinkFollowingReference:
    """Runs the exported file with its decision values as extra outputs, then the FX graph in float64."""

    def __init__(self, graph: torch.fx.GraphModule, path: Path):
        proto = onnx.load(str(path))
        values = {name for node in proto.graph.node for name in node.output}
        self.graph, self.decision_types = graph, _decision_nodes(graph, values)
        self.outputs = [o.name for o in proto.graph.output]
        for name, element_type in self.decision_types.items():
            proto.graph.output.append(helper.make_tensor_value_info(name, element_type, None))
        self.session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray, target: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(ONNX Runtime's outputs, the float64 reference's outputs), both by output name."""
        values = self.session.run(None, {"input": x, "target": target})
        names = self.outputs + list(self.decision_types)
        produced = dict(zip(names, values, strict=True))
        follow = _FollowDecisions(self.graph, {name: produced[name] for name in self.decision_types})
        with torch.no_grad():
            reference = follow.run(torch.from_numpy(x).double(), torch.from_numpy(target))
        self.decisions_used = follow.used
        actual = {name: produced[name] for name in self.outputs}
        expected = {name: value.numpy() for name, value in zip(self.outputs, reference, strict=True)}
        return actual, expected
