"""The index-moving rules of CNN fixations, each on a graph built with onnx.helper (no torch): a strided and
dilated convolution, a grouped one, a channel concat, and pad -> slice -> transpose -> reshape."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxcam.runner.methods.fixations import Backtrack, check
from onnxcam.runner.model.backend import OnnxRuntimeBackend
from onnxcam.runner.model.forward import ForwardGraph


def fixations(tmp_path, nodes, weights: dict[str, np.ndarray], image: np.ndarray) -> set[tuple[int, ...]]:
    """Backtracks class 0 of input [1, *image.shape] -> nodes -> `logits` [1, 1]."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *image.shape]),
                     helper.make_tensor_value_info("target", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    forward = ForwardGraph(path)
    assert check(forward) == ""
    _, values = OnnxRuntimeBackend(path, ["cpu"]).forward_values(image[None].astype(np.float32))
    own = {name: value[0] if name in forward.dynamic else value for name, value in values.items()}
    return {tuple(int(v) for v in p) for p in Backtrack(forward, own | {"input": image}).input_pixels(0)}


def head(size: int, pick: int) -> tuple[list, dict]:
    """Flatten -> MatMul with a weight that reads only flat position `pick`."""
    weight = np.zeros((size, 1), np.float32)
    weight[pick] = 1
    return [helper.make_node("Flatten", ["map"], ["flat"]), helper.make_node("MatMul", ["flat", "w_head"], ["logits"])
            ], {"w_head": weight}


def test_a_strided_dilated_convolution(tmp_path):
    """Output (1, 2) of a 3x3 conv with stride 2, dilation 2 and only its bottom-right tap reads input
    (1*2 + 2*2, 2*2 + 2*2) = (6, 8)."""
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    kernel[0, 0, 2, 2] = 1
    nodes, weights = head(9, 1 * 3 + 2)
    nodes = [helper.make_node("Conv", ["input", "w"], ["map"], strides=[2, 2], dilations=[2, 2], pads=[0, 0, 0, 0],
                              kernel_shape=[3, 3]), *nodes]
    image = np.random.default_rng(0).uniform(0.1, 0.2, (1, 9, 9)).astype(np.float32)
    image[0, 6, 8] = 1
    assert fixations(tmp_path, nodes, weights | {"w": kernel}, image) == {(6, 8)}


def test_a_grouped_convolution_stays_in_its_group(tmp_path):
    """Depthwise 1x1 (group 2): output channel 1 reads input channel 1 only, though channel 0 is larger."""
    nodes, weights = head(2 * 3 * 3, 1 * 9 + 4)
    nodes = [helper.make_node("Conv", ["input", "w"], ["map"], group=2, kernel_shape=[1, 1]), *nodes]
    image = np.full((2, 3, 3), 0.5, np.float32)
    image[0] = 5
    assert fixations(tmp_path, nodes, weights | {"w": np.ones((2, 1, 1, 1), np.float32)}, image) == {(1, 1)}


def test_a_channel_concat_routes_to_its_source(tmp_path):
    """Concat(Relu(x), Neg(x)) along channels: channel 1 of the output is Neg's; Neg keeps the point."""
    nodes, weights = head(2 * 2 * 2, 1 * 4 + 3)
    nodes = [helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Neg", ["input"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["map"], axis=1), *nodes]
    image = np.full((1, 2, 2), -1.0, np.float32)
    assert fixations(tmp_path, nodes, weights, image) == {(1, 1)}


def test_pad_slice_transpose_reshape_move_the_index(tmp_path):
    """Pad 1 all round, slice the middle back out, swap h and w, flatten: flat position 1 * 4 + 3 of the
    transposed map is (h, w) = (1, 3) there, (3, 1) before the transpose, (4, 2) in the padded map, (3, 1)."""
    nodes, weights = head(16, 1 * 4 + 3)
    pads, starts, ends = (np.array(v, np.int64) for v in ([0, 0, 1, 1, 0, 0, 1, 1], [1, 1], [5, 5]))
    axes = np.array([2, 3], np.int64)
    nodes = [helper.make_node("Pad", ["input", "pads"], ["padded"]),
             helper.make_node("Slice", ["padded", "starts", "ends", "axes"], ["middle"]),
             helper.make_node("Transpose", ["middle"], ["map"], perm=[0, 1, 3, 2]), *nodes]
    image = np.random.default_rng(1).uniform(0.1, 0.2, (1, 4, 4)).astype(np.float32)
    assert fixations(tmp_path, nodes, weights | {"pads": pads, "starts": starts, "ends": ends, "axes": axes},
                     image) == {(3, 1)}
