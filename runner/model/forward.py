"""The explain graph's forward pass, node by node: what CNN fixations backtrack through.

The forward part is every node the `logits` output depends on (the graph's backward ops are left out), in
execution order. A value is dynamic when it depends on the input image; the others (weights, a transposed
weight, shape arithmetic) are the same for every image. `augmented()` is that forward part returning every
intermediate float tensor too, so one ONNX Runtime pass yields all the activations a backtrack reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
from onnx import numpy_helper


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    output: str
    attributes: dict


def stored_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The values a graph stores rather than computes: its initializers and its Constant nodes' values."""
    stored = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            value = onnx.helper.get_attribute_value(node.attribute[0])
            stored[node.output[0]] = value if isinstance(value, onnx.TensorProto) else numpy_helper.from_array(
                np.asarray(value, np.float32 if "float" in node.attribute[0].name else np.int64))
    return stored


def forward_graph(path: Path) -> ForwardGraph:
    """The file's forward graph, read once for the run's model check and its backend alike (a new read if the
    file changed)."""
    stat = path.stat()
    return _read(path.resolve(), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=1)
def _read(path: Path, mtime_ns: int, size: int) -> ForwardGraph:
    return ForwardGraph(path)


class ForwardGraph:
    def __init__(self, path: Path):
        self.path = path
        model = onnx.load(str(path), load_external_data=False)
        self._model = model
        producers = {output: node for node in model.graph.node for output in node.output}
        needed, stack = set(), ["logits"]
        while stack:
            node = producers.get(stack.pop())
            if node is not None and node.output[0] not in needed:
                needed.add(node.output[0])
                stack.extend(node.input)
        self.nodes = [Node(node.op_type, node.name, tuple(node.input), node.output[0],
                           {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
                      for node in model.graph.node if node.output[0] in needed]
        self.dynamic = {"input"}  # values that depend on the image's values (a Shape of it does not, nor the
        for node in self.nodes:  # type that CastLike's second input only lends)
            inputs = node.inputs[:1] if node.op == "CastLike" else node.inputs
            if node.op not in ("Shape", "Size") and self.dynamic.intersection(inputs):
                self.dynamic.add(node.output)
        inferred = onnx.shape_inference.infer_shapes(model)
        kinds = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
        initializers = {tensor.name for tensor in model.graph.initializer}
        self.returned = [node.output for node in self.nodes if node.op != "Constant" and node.output != "logits"
                         and kinds.get(node.output) == onnx.TensorProto.FLOAT and node.output not in initializers]
        self.followed = self.dynamic.intersection([*self.returned, "logits"])  # what a backtrack may pass through
        self.producers = {node.output: node for node in self.nodes}  # Constant nodes included
        self._arrays: dict[str, np.ndarray | None] = {}

    @cached_property
    def _stored(self) -> dict[str, onnx.TensorProto]:
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in self._model.graph.initializer)
        return stored_tensors(onnx.load(str(self.path)) if external else self._model)

    def constant(self, name: str) -> np.ndarray | None:
        """A weight or a Constant node's value (None for anything computed); converted once, then shared (a
        backtrack reads every weight for every image), so callers must not write to it."""
        if name not in self._arrays:
            tensor = self._stored.get(name)
            self._arrays[name] = None if tensor is None else numpy_helper.to_array(tensor)
        return self._arrays[name]

    def static(self, name: str) -> np.ndarray | None:
        """A value fixed by the graph alone, such as a Slice's bounds or a ReduceMean's axes: a stored one, or one
        passed through Reshape, Identity, Cast, Squeeze or Unsqueeze on its way (None for anything else)."""
        while name in self.producers and self.producers[name].op in ("Reshape", "Identity", "Cast", "Squeeze",
                                                                     "Unsqueeze"):
            name = self.producers[name].inputs[0]
        value = self.constant(name) if name not in self.producers or self.producers[name].op == "Constant" else None
        return None if value is None else np.ravel(value)

    def augmented(self) -> bytes:
        """input -> logits and every intermediate float tensor (weights over 2 GB stay in the side file)."""
        extracted = onnx.utils.Extractor(self._model).extract_model(["input"], ["logits"])
        extracted.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                                      for name in self.returned)
        return extracted.SerializeToString()
