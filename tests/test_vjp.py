"""The ONNX gradient builder (exporter/vjp.py) equals torch autograd, op by op and on whole exported models."""

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxcam.exporter.parity import relative_error
from onnxcam.exporter.vjp import NotDifferentiable, backward, differentiable_ops

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

TOLERANCE = 1e-5
RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def node(op: str, inputs: list[str], outputs: tuple[str, ...] = ("y",), **attributes) -> onnx.NodeProto:
    return helper.make_node(op, inputs, list(outputs), name=f"the_{op}", **attributes)


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], constants: dict[str, np.ndarray],
               outputs: list[str], opset: int = 18, batch: bool = True) -> onnx.ModelProto:
    """`inputs` become graph inputs, their first dimension symbolic where `batch`; shapes inferred as the caller's."""
    graph_inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                  ["N", *value.shape[1:]] if batch else value.shape)
                    for name, value in inputs.items()]
    graph = helper.make_graph(nodes, "op", graph_inputs, [onnx.ValueInfoProto(name=name) for name in outputs],
                              [numpy_helper.from_array(value, name) for name, value in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def assert_every_node_is_used(result) -> None:
    used = {x for n in result.nodes for x in n.input} | set(result.gradients.values())
    assert all(set(n.output) & used for n in result.nodes), "a node whose outputs nothing uses"


def onnx_gradients(model: onnx.ModelProto, feeds: dict[str, np.ndarray], wanted: list[str], guided: bool = False,
                   prefix: str = "grad") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random seeds for the graph's float outputs, then backward() run by ONNX Runtime: (seeds, gradients of
    `wanted`)."""
    outputs = [o.name for o in model.graph.output]
    forward = {name: value for name, value in zip(outputs, session(model).run(None, feeds), strict=True)
               if value.dtype.kind == "f"}
    outputs = list(forward)
    generator = np.random.default_rng(1)  # the same seeds whichever tests run
    seeds = {f"seed_{name}": generator.standard_normal(value.shape).astype(value.dtype)
             for name, value in forward.items()}
    result = backward(model, {name: f"seed_{name}" for name in outputs}, wanted, guided=guided, prefix=prefix)
    new_names = [n.name for n in result.nodes] + [y for n in result.nodes for y in n.output]
    assert all(name.startswith(prefix) for name in new_names + [i.name for i in result.initializers])
    assert_every_node_is_used(result)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    types = {info.name: info.type for info in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    model.graph.input.extend(onnx.ValueInfoProto(name=f"seed_{name}", type=types[name]) for name in outputs)
    model.graph.node.extend(result.nodes)
    model.graph.initializer.extend(result.initializers)
    names = [result.gradients[name] for name in wanted]
    model.graph.output.extend(onnx.ValueInfoProto(name=result.gradients[name], type=types[name]) for name in wanted)
    onnx.checker.check_model(model, full_check=True)
    gradients = session(model).run(names, {**feeds, **seeds})
    return seeds, dict(zip(wanted, gradients, strict=True))


def torch_gradients(fn, inputs: dict[str, np.ndarray], constants: dict[str, np.ndarray], wanted: list[str],
                    seeds: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The same op in float64 torch, its gradients by autograd."""
    tensors = {name: torch.tensor(value, dtype=torch.float64 if value.dtype.kind == "f" else None,
                                  requires_grad=name in wanted) for name, value in {**inputs, **constants}.items()}
    outputs = fn(tensors)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    grads = torch.autograd.grad(outputs, [tensors[name] for name in wanted],
                                [torch.tensor(seed, dtype=torch.float64) for seed in seeds])
    return {name: grad.numpy() for name, grad in zip(wanted, grads, strict=True)}


def same_pads(size: int, kernel: int, stride: int, lower: bool = False) -> tuple[int, int]:
    """SAME padding's (begin, end), written out from the definition for the torch side."""
    total = max(0, (math.ceil(size / stride) - 1) * stride + kernel - size)
    return (total - total // 2, total // 2) if lower else (total // 2, total - total // 2)


W = {name: rand(*shape) for name, shape in {
    "w": (6, 4, 3, 3), "w_group": (6, 2, 3, 3), "w_depthwise": (4, 1, 3, 3), "w_1x1": (5, 4, 1, 1),
    "w_5x5": (3, 4, 5, 5), "w_1d": (3, 4, 3),
}.items()}
UP, LOW = same_pads(9, 3, 2), same_pads(9, 3, 2, lower=True)
MP = same_pads(9, 3, 2)

# id: (nodes, live inputs, constants, torch function[, options]); the live inputs are the wanted tensors
CASES = {
    # convolution
    "conv": ([node("Conv", ["x", "w"], pads=[1, 1, 1, 1])], {"x": rand(2, 4, 7, 7)}, {"w": W["w"]},
             lambda t: F.conv2d(t["x"], t["w"], padding=1)),
    "conv_bias_stride2": ([node("Conv", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1])],
                          {"x": rand(2, 4, 8, 8)}, {"w": W["w"], "b": rand(6)},
                          lambda t: F.conv2d(t["x"], t["w"], t["b"], stride=2, padding=1)),
    "conv_stride2_odd": ([node("Conv", ["x", "w"], strides=[2, 2], pads=[1, 1, 1, 1])], {"x": rand(2, 4, 9, 9)},
                         {"w": W["w"]}, lambda t: F.conv2d(t["x"], t["w"], stride=2, padding=1)),
    "conv_stride3_leftover": ([node("Conv", ["x", "w"], strides=[3, 3])], {"x": rand(1, 4, 11, 11)},
                              {"w": W["w"]}, lambda t: F.conv2d(t["x"], t["w"], stride=3)),
    "conv_dilated": ([node("Conv", ["x", "w"], dilations=[2, 2], pads=[2, 2, 2, 2])], {"x": rand(2, 4, 8, 8)},
                     {"w": W["w"]}, lambda t: F.conv2d(t["x"], t["w"], padding=2, dilation=2)),
    "conv_grouped": ([node("Conv", ["x", "w_group"], group=2, pads=[1, 1, 1, 1])], {"x": rand(2, 4, 6, 6)},
                     {"w_group": W["w_group"]}, lambda t: F.conv2d(t["x"], t["w_group"], padding=1, groups=2)),
    "conv_depthwise_stride2": ([node("Conv", ["x", "w_depthwise"], group=4, strides=[2, 2], pads=[1, 1, 1, 1])],
                               {"x": rand(2, 4, 8, 8)}, {"w_depthwise": W["w_depthwise"]},
                               lambda t: F.conv2d(t["x"], t["w_depthwise"], stride=2, padding=1, groups=4)),
    "conv_asymmetric_pads": ([node("Conv", ["x", "w_5x5"], strides=[2, 2], pads=[0, 1, 2, 3])],
                             {"x": rand(2, 4, 9, 8)}, {"w_5x5": W["w_5x5"]},
                             lambda t: F.conv2d(F.pad(t["x"], (1, 3, 0, 2)), t["w_5x5"], stride=2)),
    "conv_same_upper": ([node("Conv", ["x", "w"], strides=[2, 2], auto_pad="SAME_UPPER")], {"x": rand(2, 4, 9, 9)},
                        {"w": W["w"]}, lambda t: F.conv2d(F.pad(t["x"], UP + UP), t["w"], stride=2)),
    "conv_same_lower": ([node("Conv", ["x", "w"], strides=[2, 2], auto_pad="SAME_LOWER")], {"x": rand(2, 4, 9, 9)},
                        {"w": W["w"]}, lambda t: F.conv2d(F.pad(t["x"], LOW + LOW), t["w"], stride=2)),
    "conv_valid_1x1_stride2": ([node("Conv", ["x", "w_1x1"], strides=[2, 2], auto_pad="VALID")],
                               {"x": rand(2, 4, 7, 7)}, {"w_1x1": W["w_1x1"]},
                               lambda t: F.conv2d(t["x"], t["w_1x1"], stride=2)),
    "conv_1d": ([node("Conv", ["x", "w_1d"], pads=[1, 1])], {"x": rand(2, 4, 9)}, {"w_1d": W["w_1d"]},
                lambda t: F.conv1d(t["x"], t["w_1d"], padding=1)),
    # linear algebra
    "gemm_transB_bias": ([node("Gemm", ["x", "w", "c"], transB=1)], {"x": rand(3, 5)}, {"w": rand(4, 5), "c": rand(4)},
                         lambda t: t["x"] @ t["w"].T + t["c"]),
    "gemm_alpha_beta_both": ([node("Gemm", ["x", "w", "c"], alpha=0.5, beta=2.0)], {"x": rand(3, 5), "w": rand(5, 4)},
                             {"c": rand(1, 4)}, lambda t: 0.5 * t["x"] @ t["w"] + 2 * t["c"], {"batch": False}),
    "gemm_transA_transB_all": ([node("Gemm", ["x", "w", "c"], transA=1, transB=1, alpha=1.5)],
                               {"x": rand(5, 3), "w": rand(4, 5), "c": rand(3, 4)}, {},
                               lambda t: 1.5 * t["x"].T @ t["w"].T + t["c"], {"batch": False}),
    "gemm_transA": ([node("Gemm", ["x", "w"], transA=1)], {"x": rand(5, 3), "w": rand(5, 4)}, {},
                    lambda t: t["x"].T @ t["w"], {"batch": False}),
    "matmul_weight": ([node("MatMul", ["x", "w"])], {"x": rand(3, 5)}, {"w": rand(5, 4)}, lambda t: t["x"] @ t["w"]),
    "matmul_tokens_weight": ([node("MatMul", ["x", "w"])], {"x": rand(2, 3, 5)}, {"w": rand(5, 4)},
                             lambda t: t["x"] @ t["w"]),
    "matmul_batched_both": ([node("MatMul", ["x", "z"])], {"x": rand(2, 3, 4, 5), "z": rand(2, 3, 5, 2)}, {},
                            lambda t: t["x"] @ t["z"]),
    "matmul_broadcast_both": ([node("MatMul", ["x", "z"])], {"x": rand(2, 3, 4, 5), "z": rand(1, 5, 2)}, {},
                              lambda t: t["x"] @ t["z"], {"batch": False}),
    "matmul_vector": ([node("MatMul", ["x", "z"])], {"x": rand(2, 4, 5), "z": rand(5)}, {},
                      lambda t: t["x"] @ t["z"], {"batch": False}),
    # element-wise
    "relu": ([node("Relu", ["x"])], {"x": rand(2, 3, 4)}, {}, lambda t: F.relu(t["x"])),
    "clip_relu6": ([node("Clip", ["x", "lo", "hi"])], {"x": 4 * rand(2, 3, 4)},
                   {"lo": np.float32(0), "hi": np.float32(6)}, lambda t: F.hardtanh(t["x"], 0, 6)),
    "clip_min_only": ([node("Clip", ["x", "lo"])], {"x": rand(2, 3, 4)}, {"lo": np.float32(-0.5)},
                      lambda t: torch.clamp(t["x"], min=-0.5)),
    "clip_max_only": ([node("Clip", ["x", "", "hi"])], {"x": rand(2, 3, 4)}, {"hi": np.float32(0.5)},
                      lambda t: torch.clamp(t["x"], max=0.5)),
    "leaky_relu": ([node("LeakyRelu", ["x"], alpha=0.2)], {"x": rand(2, 3, 4)}, {},
                   lambda t: F.leaky_relu(t["x"], 0.2)),
    "sigmoid": ([node("Sigmoid", ["x"])], {"x": rand(2, 3, 4)}, {}, lambda t: torch.sigmoid(t["x"])),
    "hard_sigmoid_torch": ([node("HardSigmoid", ["x"], alpha=1 / 6, beta=0.5)], {"x": 4 * rand(2, 3, 4)}, {},
                           lambda t: F.hardsigmoid(t["x"])),
    "hard_sigmoid_default": ([node("HardSigmoid", ["x"])], {"x": 4 * rand(2, 3, 4)}, {},
                             lambda t: torch.clamp(0.2 * t["x"] + 0.5, 0, 1)),
    "hard_swish": ([node("HardSwish", ["x"])], {"x": 4 * rand(2, 3, 4)}, {}, lambda t: F.hardswish(t["x"])),
    "erf": ([node("Erf", ["x"])], {"x": rand(2, 3, 4)}, {}, lambda t: torch.erf(t["x"])),
    "gelu": ([node("Gelu", ["x"])], {"x": 2 * rand(2, 3, 4)}, {}, lambda t: F.gelu(t["x"]), {"opset": 20}),
    "gelu_tanh": ([node("Gelu", ["x"], approximate="tanh")], {"x": 2 * rand(2, 3, 4)}, {},
                  lambda t: F.gelu(t["x"], approximate="tanh"), {"opset": 20}),
    "sqrt": ([node("Sqrt", ["x"])], {"x": np.abs(rand(2, 3, 4)) + 0.1}, {}, lambda t: torch.sqrt(t["x"])),
    "pow_2": ([node("Pow", ["x", "p"])], {"x": rand(2, 3, 4)}, {"p": np.float32(2)}, lambda t: t["x"] ** 2),
    "pow_3_int_exponent": ([node("Pow", ["x", "p"])], {"x": rand(2, 3, 4)}, {"p": np.int64(3)},
                           lambda t: t["x"] ** 3),
    "pow_half": ([node("Pow", ["x", "p"])], {"x": np.abs(rand(2, 3, 4)) + 0.1}, {"p": np.float32(0.5)},
                 lambda t: t["x"] ** 0.5),
    "exp": ([node("Exp", ["x"])], {"x": rand(2, 3, 4)}, {}, lambda t: torch.exp(t["x"])),
    "log": ([node("Log", ["x"])], {"x": np.abs(rand(2, 3, 4)) + 0.1}, {}, lambda t: torch.log(t["x"])),
    "tanh": ([node("Tanh", ["x"])], {"x": rand(2, 3, 4)}, {}, lambda t: torch.tanh(t["x"])),
    "neg": ([node("Neg", ["x"])], {"x": rand(2, 3, 4)}, {}, lambda t: -t["x"]),
    "reciprocal": ([node("Reciprocal", ["x"])], {"x": np.abs(rand(2, 3, 4)) + 0.5}, {}, lambda t: 1 / t["x"]),
    "prelu": ([node("PRelu", ["x", "slope"])], {"x": rand(2, 3, 4, 4)}, {"slope": rand(3, 1, 1)},
              lambda t: F.prelu(t["x"], t["slope"][:, 0, 0])),
    "elu": ([node("Elu", ["x"], alpha=0.7)], {"x": rand(2, 3, 4)}, {}, lambda t: F.elu(t["x"], 0.7)),
    "softplus": ([node("Softplus", ["x"])], {"x": rand(2, 3, 4)}, {}, lambda t: F.softplus(t["x"])),
    "abs": ([node("Abs", ["x"])], {"x": rand(2, 3, 4)}, {}, lambda t: torch.abs(t["x"])),
    "max_ties": ([node("Max", ["x", "z"])], {"x": RNG.integers(0, 3, (2, 3, 4)).astype(np.float32),
                                              "z": RNG.integers(0, 3, (2, 1, 4)).astype(np.float32)}, {},
                 lambda t: torch.maximum(t["x"], t["z"])),
    "min_constant": ([node("Min", ["x", "c"])], {"x": rand(2, 3, 4)}, {"c": rand(4)},
                     lambda t: torch.minimum(t["x"], t["c"])),
    "mean_two": ([node("Mean", ["x", "z"])], {"x": rand(2, 3, 4), "z": rand(2, 3, 1)}, {},
                 lambda t: (t["x"] + t["z"]) / 2),
    "add_bias": ([node("Add", ["x", "c"])], {"x": rand(2, 3, 4, 4)}, {"c": rand(3, 1, 1)}, lambda t: t["x"] + t["c"]),
    "add_broadcast_both": ([node("Add", ["x", "z"])], {"x": rand(2, 3, 4, 4), "z": rand(2, 3, 1, 1)}, {},
                           lambda t: t["x"] + t["z"]),
    "add_same_tensor": ([node("Add", ["x", "x"])], {"x": rand(2, 3)}, {}, lambda t: t["x"] + t["x"]),
    "sub_both": ([node("Sub", ["x", "z"])], {"x": rand(2, 1, 4), "z": rand(2, 3, 1)}, {}, lambda t: t["x"] - t["z"]),
    "sub_constant_first": ([node("Sub", ["c", "x"])], {"x": rand(2, 3)}, {"c": rand(3)}, lambda t: t["c"] - t["x"]),
    "mul_squeeze_excitation": ([node("Mul", ["x", "z"])], {"x": rand(2, 3, 4, 4), "z": rand(2, 3, 1, 1)}, {},
                               lambda t: t["x"] * t["z"]),
    "mul_scalar": ([node("Mul", ["x", "c"])], {"x": rand(2, 3)}, {"c": np.float32(0.7)}, lambda t: t["x"] * 0.7),
    "div_both": ([node("Div", ["x", "z"])], {"x": rand(2, 3, 4), "z": np.abs(rand(2, 1, 4)) + 0.5}, {},
                 lambda t: t["x"] / t["z"]),
    "div_constant": ([node("Div", ["x", "c"])], {"x": rand(2, 3, 4)}, {"c": np.float32(1.41)},
                     lambda t: t["x"] / 1.41),
    "add_both_opset11": ([node("Add", ["x", "z"])], {"x": rand(2, 3, 4), "z": rand(4)}, {},
                         lambda t: t["x"] + t["z"], {"opset": 11}),
    "sum_three": ([node("Sum", ["x", "z", "c"])], {"x": rand(2, 3, 4), "z": rand(2, 1, 4)}, {"c": rand(4)},
                  lambda t: t["x"] + t["z"] + t["c"]),
    "where": ([node("Where", ["m", "x", "z"])], {"x": rand(2, 3, 4), "z": rand(2, 1, 4)},
              {"m": RNG.random((3, 4)) > 0.5}, lambda t: torch.where(t["m"], t["x"], t["z"])),
    # pooling and reductions
    "max_pool_resnet": ([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                        {"x": rand(2, 3, 10, 10)}, {}, lambda t: F.max_pool2d(t["x"], 3, 2, 1)),
    "max_pool_opset11": ([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                         {"x": rand(2, 3, 10, 10)}, {}, lambda t: F.max_pool2d(t["x"], 3, 2, 1), {"opset": 11}),
    "max_pool_own_indices": ([node("MaxPool", ["x"], ("y", "indices"), kernel_shape=[3, 3], strides=[2, 2])],
                             {"x": rand(2, 3, 9, 9)}, {}, lambda t: F.max_pool2d(t["x"], 3, 2)),
    "max_pool_2x2": ([node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], {"x": rand(2, 3, 8, 8)}, {},
                     lambda t: F.max_pool2d(t["x"], 2, 2)),
    "max_pool_stride1_pads": ([node("MaxPool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                              {"x": rand(2, 3, 6, 6)}, {}, lambda t: F.max_pool2d(t["x"], 3, 1, 1)),
    "max_pool_ceil": ([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
                      {"x": rand(2, 3, 8, 8)}, {}, lambda t: F.max_pool2d(t["x"], 3, 2, ceil_mode=True)),
    "max_pool_dilated": ([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                               dilations=[2, 2])], {"x": rand(2, 3, 11, 11)}, {},
                         lambda t: F.max_pool2d(t["x"], 3, 2, 1, dilation=2)),
    "max_pool_same_upper": ([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")],
                            {"x": rand(2, 3, 9, 9)}, {},
                            lambda t: F.max_pool2d(F.pad(t["x"], MP + MP, value=-math.inf), 3, 2)),
    "max_pool_ties": ([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                      {"x": RNG.integers(0, 3, (2, 3, 9, 9)).astype(np.float32)}, {},
                      lambda t: F.max_pool2d(t["x"], 3, 2, 1)),
    "max_pool_rectangular": ([node("MaxPool", ["x"], kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 1])],
                             {"x": rand(2, 3, 7, 9)}, {},
                             lambda t: F.max_pool2d(F.pad(t["x"], (1, 1, 0, 1), value=-math.inf), (2, 3), (1, 2))),
    "average_pool_2x2": ([node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], {"x": rand(2, 3, 8, 8)},
                         {}, lambda t: F.avg_pool2d(t["x"], 2, 2)),
    "average_pool_pads_exclude": ([node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                                  {"x": rand(2, 3, 6, 6)}, {},
                                  lambda t: F.avg_pool2d(t["x"], 3, 1, 1, count_include_pad=False)),
    "average_pool_pads_include": ([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                        pads=[1, 1, 1, 1], count_include_pad=1)], {"x": rand(2, 3, 9, 9)}, {},
                                  lambda t: F.avg_pool2d(t["x"], 3, 2, 1, count_include_pad=True)),
    "average_pool_ceil": ([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
                          {"x": rand(2, 3, 8, 8)}, {}, lambda t: F.avg_pool2d(t["x"], 3, 2, ceil_mode=True)),
    "average_pool_kernel1": ([node("AveragePool", ["x"], kernel_shape=[1, 1])], {"x": rand(2, 3, 4, 4)}, {},
                             lambda t: F.avg_pool2d(t["x"], 1)),
    "global_average_pool": ([node("GlobalAveragePool", ["x"])], {"x": rand(2, 3, 5, 4)}, {},
                            lambda t: t["x"].mean((2, 3), keepdim=True)),
    "reduce_mean_keepdims": ([node("ReduceMean", ["x", "axes"])], {"x": rand(2, 3, 5, 4)}, {"axes": ints(2, 3)},
                             lambda t: t["x"].mean((2, 3), keepdim=True)),
    "reduce_mean_negative_axes": ([node("ReduceMean", ["x", "axes"], keepdims=0)], {"x": rand(2, 3, 5, 4)},
                                  {"axes": ints(-1, -2)}, lambda t: t["x"].mean((2, 3))),
    "reduce_mean_all": ([node("ReduceMean", ["x"], keepdims=0)], {"x": rand(2, 3, 4)}, {}, lambda t: t["x"].mean()),
    "reduce_mean_opset13": ([node("ReduceMean", ["x"], axes=[1], keepdims=0)], {"x": rand(2, 3, 4)}, {},
                            lambda t: t["x"].mean(1), {"opset": 13}),
    "reduce_mean_constant_node_axes": ([node("Constant", [], ("axes",), value_ints=[2, 3]),
                                        node("ReduceMean", ["x", "axes"], keepdims=0)], {"x": rand(2, 3, 5, 4)}, {},
                                       lambda t: t["x"].mean((2, 3))),
    "reduce_max_ties": ([node("ReduceMax", ["x", "axes"], keepdims=0)],
                        {"x": RNG.integers(0, 4, (2, 3, 5)).astype(np.float32)}, {"axes": ints(1, 2)},
                        lambda t: torch.amax(t["x"], (1, 2))),
    "global_max_pool": ([node("GlobalMaxPool", ["x"])], {"x": rand(2, 3, 4, 5)}, {},
                        lambda t: torch.amax(t["x"], (2, 3), keepdim=True)),
    "reduce_max_opset12": ([node("ReduceMax", ["x"], axes=[-1], keepdims=0)], {"x": rand(2, 3, 5)}, {},
                           lambda t: torch.amax(t["x"], -1), {"opset": 12}),
    "reduce_sum": ([node("ReduceSum", ["x", "axes"], keepdims=0)], {"x": rand(2, 3, 4)}, {"axes": ints(1)},
                   lambda t: t["x"].sum(1)),
    # normalisation
    "batch_norm": ([node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)], {"x": rand(2, 3, 4, 4)},
                   {"s": rand(3), "b": rand(3), "m": rand(3), "v": np.abs(rand(3)) + 0.5},
                   lambda t: F.batch_norm(t["x"], t["m"], t["v"], t["s"], t["b"], eps=1e-3)),
    "layer_norm": ([node("LayerNormalization", ["x", "s", "b"])], {"x": rand(2, 3, 4, 6)},
                   {"s": rand(6), "b": rand(6)}, lambda t: F.layer_norm(t["x"], (6,), t["s"], t["b"])),
    "layer_norm_axis1": ([node("LayerNormalization", ["x", "s"], axis=1, epsilon=1e-6)], {"x": rand(2, 3, 4, 5)},
                         {"s": rand(3, 4, 5)}, lambda t: F.layer_norm(t["x"], (3, 4, 5), t["s"], eps=1e-6)),
    "layer_norm_opset17": ([node("LayerNormalization", ["x", "s", "b"], axis=-2)], {"x": rand(2, 3, 4, 6)},
                           {"s": rand(4, 6), "b": rand(4, 6)}, lambda t: F.layer_norm(t["x"], (4, 6), t["s"], t["b"]),
                           {"opset": 17}),
    "softmax": ([node("Softmax", ["x"])], {"x": rand(2, 3, 5)}, {}, lambda t: F.softmax(t["x"], -1)),
    "softmax_axis1": ([node("Softmax", ["x"], axis=1)], {"x": rand(2, 3, 5)}, {}, lambda t: F.softmax(t["x"], 1)),
    "softmax_opset11_flattens": ([node("Softmax", ["x"], axis=1)], {"x": rand(2, 3, 5)}, {},
                                 lambda t: F.softmax(t["x"].flatten(1), 1).reshape(2, 3, 5), {"opset": 11}),
    "log_softmax": ([node("LogSoftmax", ["x"], axis=1)], {"x": rand(2, 5)}, {}, lambda t: F.log_softmax(t["x"], 1)),
    # shapes
    "reshape": ([node("Reshape", ["x", "shape"])], {"x": rand(2, 3, 4)}, {"shape": ints(0, 4, 3)},
                lambda t: t["x"].reshape(-1, 4, 3)),
    "flatten": ([node("Flatten", ["x"])], {"x": rand(2, 3, 2, 2)}, {}, lambda t: t["x"].flatten(1)),
    "transpose": ([node("Transpose", ["x"], perm=[0, 2, 3, 1])], {"x": rand(2, 3, 4, 5)}, {},
                  lambda t: t["x"].permute(0, 2, 3, 1)),
    "squeeze": ([node("Squeeze", ["x", "axes"])], {"x": rand(2, 3, 1, 1)}, {"axes": ints(2, 3)},
                lambda t: t["x"][:, :, 0, 0]),
    "unsqueeze": ([node("Unsqueeze", ["x", "axes"])], {"x": rand(2, 3)}, {"axes": ints(-1)},
                  lambda t: t["x"][..., None]),
    "expand": ([node("Expand", ["x", "shape"])], {"x": rand(2, 3, 1)}, {"shape": ints(1, 3, 4)},
               lambda t: t["x"].expand(-1, 3, 4)),
    "tile": ([node("Tile", ["x", "repeats"])], {"x": rand(2, 3, 4)}, {"repeats": ints(1, 2, 3)},
             lambda t: t["x"].repeat(1, 2, 3)),
    "concat": ([node("Concat", ["x", "c", "z"], axis=1)], {"x": rand(2, 3, 4), "z": rand(2, 2, 4)},
               {"c": rand(2, 1, 4)}, lambda t: torch.cat([t["x"], t["c"], t["z"]], 1), {"batch": False}),
    "concat_opset11": ([node("Concat", ["x", "z"], axis=-1)], {"x": rand(2, 3, 4), "z": rand(2, 3, 2)}, {},
                       lambda t: torch.cat([t["x"], t["z"]], -1), {"opset": 11}),
    "split_opset11": ([node("Split", ["x"], ("y0", "y1"), axis=1, split=[1, 2])], {"x": rand(2, 3, 4)}, {},
                      lambda t: tuple(torch.split(t["x"], [1, 2], 1)), {"opset": 11}),
    "unsqueeze_opset11": ([node("Unsqueeze", ["x"], axes=[1])], {"x": rand(2, 3)}, {}, lambda t: t["x"][:, None],
                          {"opset": 11}),
    "split_sizes": ([node("Split", ["x", "sizes"], ("y0", "y1"), axis=1)], {"x": rand(2, 5, 3)}, {"sizes": ints(2, 3)},
                    lambda t: tuple(torch.split(t["x"], [2, 3], 1))),
    "split_num_outputs_one_used": ([node("Split", ["x"], ("y0", "y1", "y2"), axis=-1, num_outputs=3),
                                    node("Identity", ["y1"], ("y",))], {"x": rand(2, 3, 6)}, {},
                                   lambda t: torch.split(t["x"], 2, -1)[1]),
    "slice_negative": ([node("Slice", ["x", "starts", "ends", "axes"])], {"x": rand(2, 6, 7)},
                       {"starts": ints(1, -3), "ends": ints(-1, 1000), "axes": ints(1, -1)},
                       lambda t: t["x"][:, 1:-1, -3:]),
    "slice_default_axes": ([node("Slice", ["x", "starts", "ends"])], {"x": rand(3, 6)},
                           {"starts": ints(1, 0), "ends": ints(3, 4)}, lambda t: t["x"][1:3, 0:4], {"batch": False}),
    "pad_runtime_pads": ([node("Pad", ["x", "pads"])], {"x": rand(2, 3, 4), "pads": ints(0, 1, -1, 0, 2, 1)}, {},
                         lambda t: F.pad(t["x"], (-1, 1, 1, 2)), {"batch": False}),
    "pad": ([node("Pad", ["x", "pads", "value"])], {"x": rand(2, 3, 4, 4)},
            {"pads": ints(0, 0, 1, 0, 0, 0, 2, 1), "value": np.float32(0.5)},
            lambda t: F.pad(t["x"], (0, 1, 1, 2), value=0.5)),
    "pad_negative_axes": ([node("Pad", ["x", "pads", "", "axes"])], {"x": rand(2, 3, 5, 5)},
                          {"pads": ints(-1, 2, 1, -2), "axes": ints(2, 3)},
                          lambda t: F.pad(t["x"], (2, -2, -1, 1))),
    "gather_class_token": ([node("Gather", ["x", "i"], axis=1)], {"x": rand(2, 5, 3)}, {"i": np.int64(0)},
                           lambda t: t["x"][:, 0]),
    "gather_range": ([node("Gather", ["x", "i"], axis=1)], {"x": rand(2, 5, 3)}, {"i": ints(2, 3, 4)},
                     lambda t: t["x"][:, 2:5]),
    "gather_repeated": ([node("Gather", ["x", "i"], axis=1)], {"x": rand(2, 5, 3)}, {"i": ints(4, 0, 4, -1)},
                        lambda t: t["x"][:, [4, 0, 4, 4]]),
    "gather_runtime_indices": ([node("Gather", ["x", "i"])], {"x": rand(6, 3), "i": ints(5, 0, 5, -2)}, {},
                               lambda t: t["x"][[5, 0, 5, 4]], {"batch": False}),
    "gather_runtime_indices_axis1": ([node("Gather", ["x", "i"], axis=1)],
                                     {"x": rand(2, 5, 3), "i": np.array([[4, 0], [-1, 2]], dtype=np.int64)}, {},
                                     lambda t: t["x"][:, [[4, 0], [4, 2]]], {"batch": False}),
    "identity": ([node("Identity", ["x"])], {"x": rand(2, 3)}, {}, lambda t: t["x"]),
    "dropout": ([node("Dropout", ["x"])], {"x": rand(2, 3)}, {}, lambda t: t["x"]),
    "cast_double": ([node("Cast", ["x"], to=TensorProto.DOUBLE)], {"x": rand(2, 3)}, {}, lambda t: t["x"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_op_gradient_equals_autograd(case):
    nodes, inputs, constants, fn, *options = CASES[case]
    options = options[0] if options else {}
    model = make_model(nodes, inputs, constants, [o for o in nodes[-1].output], options.get("opset", 18),
                       options.get("batch", True))
    wanted = [name for name, value in inputs.items() if value.dtype.kind == "f"]
    seeds, actual = onnx_gradients(model, inputs, wanted)
    expected = torch_gradients(fn, inputs, constants, wanted, list(seeds.values()))
    for name in wanted:
        assert actual[name].shape == inputs[name].shape
        error = relative_error(actual[name], expected[name])
        assert error <= TOLERANCE, f"{case}: d/d{name} relative error {error:.1e}"


def test_every_rule_is_tested():
    tested = {n.op_type for nodes, *_ in CASES.values() for n in nodes}
    assert set(differentiable_ops()) <= tested


@pytest.mark.parametrize("op,inputs,low,high", [
    ("Relu", ["x"], 0.0, math.inf), ("Clip", ["x", "lo", "hi"], 0.0, 6.0), ("Clip", ["x", "", "hi"], -math.inf, 1.0),
])
def test_guided_rule(op, inputs, low, high):
    """guided: relu(dY) where low < x < high (strict), 0 elsewhere; the exporter's _threshold/_hardtanh_backward."""
    x = 4 * rand(2, 3, 5)
    x[0, 0, :3] = [0.0, 6.0, 1.0]  # the bounds themselves are outside the linear range
    model = make_model([node(op, inputs)], {"x": x}, {"lo": np.float32(0), "hi": np.float32(high)}, ["y"])
    seeds, actual = onnx_gradients(model, {"x": x}, ["x"], guided=True)
    seed = next(iter(seeds.values())).astype(np.float64)
    expected = np.maximum(seed, 0) * ((x > low) & (x < high))
    assert relative_error(actual["x"], expected) <= TOLERANCE
    _, plain = onnx_gradients(model, {"x": x}, ["x"])
    assert (plain["x"] < 0).any() and not (actual["x"] < 0).any()


def test_gradients_from_several_consumers_are_summed_and_off_path_inputs_get_none():
    """y = relu(x) * sigmoid(x) + x @ w: three paths into x; w (a graph input, not wanted) gets no gradient."""
    nodes = [node("Relu", ["x"], ("r",)), node("Sigmoid", ["x"], ("s",)), node("Mul", ["r", "s"], ("m",)),
             node("MatMul", ["x", "w"], ("p",)), node("Add", ["m", "p"])]
    inputs = {"x": rand(2, 4), "w": rand(4, 4)}
    model = make_model(nodes, inputs, {}, ["y"])
    seeds, actual = onnx_gradients(model, inputs, ["x"])
    expected = torch_gradients(lambda t: F.relu(t["x"]) * torch.sigmoid(t["x"]) + t["x"] @ t["w"], inputs, {},
                               ["x"], list(seeds.values()))
    assert relative_error(actual["x"], expected["x"]) <= TOLERANCE


def test_intermediate_and_input_gradients_in_one_pass():
    nodes = [node("Conv", ["x", "w"], ("c",), pads=[1, 1, 1, 1]), node("Relu", ["c"], ("r",)),
             node("GlobalAveragePool", ["r"], ("g",)), node("Flatten", ["g"], ("f",)),
             node("Gemm", ["f", "fc"], transB=1)]
    inputs, constants = {"x": rand(2, 4, 6, 6)}, {"w": W["w"], "fc": rand(5, 6)}
    model = make_model(nodes, inputs, constants, ["y"])
    seeds, actual = onnx_gradients(model, inputs, ["x", "r"])
    tensors = {name: torch.tensor(v, dtype=torch.float64, requires_grad=True) for name, v in inputs.items()}
    r = F.relu(F.conv2d(tensors["x"], torch.tensor(W["w"], dtype=torch.float64), padding=1))
    y = r.mean((2, 3)) @ torch.tensor(constants["fc"], dtype=torch.float64).T
    expected = torch.autograd.grad(y, [tensors["x"], r], torch.tensor(seeds["seed_y"], dtype=torch.float64))
    assert relative_error(actual["x"], expected[0].numpy()) <= TOLERANCE
    assert relative_error(actual["r"], expected[1].numpy()) <= TOLERANCE


def test_keras_like_classifier():
    """The ops of Keras' Xception export in one small graph: NHWC input, strided conv with SAME's asymmetric pads,
    separable conv (depthwise + pointwise), max pool with asymmetric pads, a strided 1x1 residual, global average
    pool, Squeeze, MatMul + Add, Softmax; seeded at the probabilities."""
    generator = np.random.default_rng(5)
    weights = {name: (scale * generator.standard_normal(shape)).astype(np.float32) for name, shape, scale in [
        ("w1", (4, 3, 3, 3), 0.3), ("wd", (4, 1, 3, 3), 0.3), ("wp", (4, 4, 1, 1), 0.5), ("wr", (4, 4, 1, 1), 0.5),
        ("fc", (4, 5), 0.5), ("bias", (5,), 0.1)]}
    weights["axes"] = ints(2, 3)
    nodes = [node("Transpose", ["input"], ("t",), perm=[0, 3, 1, 2]),
             node("Conv", ["t", "w1"], ("c1",), strides=[2, 2], pads=[0, 0, 1, 1]), node("Relu", ["c1"], ("r1",)),
             node("Conv", ["r1", "wd"], ("d",), group=4, pads=[1, 1, 1, 1]), node("Conv", ["d", "wp"], ("p",)),
             node("MaxPool", ["p"], ("m",), kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
             node("Conv", ["r1", "wr"], ("s",), strides=[2, 2]), node("Add", ["m", "s"], ("a",)),
             node("Relu", ["a"], ("feature",)), node("GlobalAveragePool", ["feature"], ("g",)),
             node("Squeeze", ["g", "axes"], ("q",)), node("MatMul", ["q", "fc"], ("mm",)),
             node("Add", ["mm", "bias"], ("logits",)), node("Softmax", ["logits"], ("probs",))]
    for index, each in enumerate(nodes):
        each.name = f"node{index}"
    x = generator.standard_normal((2, 12, 12, 3)).astype(np.float32)
    model = make_model(nodes, {"input": x}, weights, ["probs"])
    seeds, actual = onnx_gradients(model, {"input": x}, ["input", "feature"])
    w = {name: torch.tensor(value, dtype=torch.float64) for name, value in weights.items()}
    x64 = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    r1 = F.relu(F.conv2d(F.pad(x64.permute(0, 3, 1, 2), (0, 1, 0, 1)), w["w1"], stride=2))
    p = F.conv2d(F.conv2d(r1, w["wd"], padding=1, groups=4), w["wp"])
    m = F.max_pool2d(F.pad(p, (0, 1, 0, 1), value=-math.inf), 3, 2)
    feature = F.relu(m + F.conv2d(r1, w["wr"], stride=2))
    probs = F.softmax(feature.mean((2, 3)) @ w["fc"] + w["bias"], -1)
    assert probs.max() < 0.9, "a saturated softmax would leave only rounding noise to compare"
    expected = torch.autograd.grad(probs, [x64, feature], torch.tensor(seeds["seed_probs"], dtype=torch.float64))
    assert relative_error(actual["input"], expected[0].numpy()) <= TOLERANCE
    assert relative_error(actual["feature"], expected[1].numpy()) <= TOLERANCE


def test_unsupported_op_on_the_path_is_one_line():
    model = make_model([node("Relu", ["x"], ("r",)), node("Sin", ["r"])], {"x": rand(2, 3)}, {}, ["y"])
    with pytest.raises(NotDifferentiable) as raised:
        backward(model, {"y": "seed"}, ["x"])
    assert str(raised.value) == "no gradient for Sin (node the_Sin, output y)"
    assert (raised.value.op_type, raised.value.node, raised.value.output) == ("Sin", "the_Sin", "y")
    model.graph.node[1].name = ""
    with pytest.raises(NotDifferentiable, match=r"^no gradient for Sin \(node #1, output y\)$"):
        backward(model, {"y": "seed"}, ["x"])


@pytest.mark.parametrize("op,inputs,constants,attributes,reason", [
    ("MaxPool", ["x"], {}, {"kernel_shape": [2, 2], "storage_order": 1}, "storage_order=1"),
    ("Pad", ["x", "pads"], {"pads": ints(0, 0, 1, 1, 0, 0, 1, 1)}, {"mode": "reflect"}, "mode reflect"),
    ("Slice", ["x", "starts", "ends", "axes", "steps"], {"starts": ints(0), "ends": ints(4), "axes": ints(3),
                                                         "steps": ints(2)}, {}, "steps other than 1"),
])
def test_unsupported_variant_is_one_line(op, inputs, constants, attributes, reason):
    model = make_model([node(op, inputs, **attributes)], {"x": rand(1, 2, 4, 4)}, constants, ["y"])
    with pytest.raises(NotDifferentiable) as raised:
        backward(model, {"y": "seed"}, ["x"])
    assert str(raised.value) == f"no gradient for {op}: {reason} (node the_{op}, output y)"


def test_unsupported_op_off_the_path_does_not_raise():
    """Sin on the shape branch (Shape -> Cast to float -> Sin -> Cast to int -> Reshape's shape) is not on the path,
    nor after the seed, nor before the wanted tensor."""
    nodes = [node("Sin", ["x"], ("before",)), node("Relu", ["before"], ("r",)), node("Shape", ["r"], ("shape",)),
             node("Cast", ["shape"], ("shape_f",), to=TensorProto.FLOAT), node("Sin", ["shape_f"], ("sin",)),
             node("Mul", ["sin", "zero"], ("zeroed",)), node("Add", ["zeroed", "shape_f"], ("same",)),
             node("Cast", ["same"], ("shape_i",), to=TensorProto.INT64), node("Reshape", ["r", "shape_i"]),
             node("Sin", ["y"], ("after",))]
    inputs = {"x": rand(2, 3)}
    model = make_model(nodes, inputs, {"zero": np.float32(0)}, ["y", "after"])
    result = backward(model, {"y": "seed"}, ["r"])
    assert {n.op_type for n in result.nodes} <= {"Reshape", "Shape", "Greater", "Where", "Relu"}
    with pytest.raises(NotDifferentiable, match="Sin"):  # but wanting x puts the first Sin on the path
        backward(model, {"y": "seed"}, ["x"])


def test_old_opsets_are_refused_with_the_fix():
    model = make_model([node("Relu", ["x"])], {"x": rand(2, 3)}, {}, ["y"], opset=10)
    with pytest.raises(ValueError, match=r"^opset 10: .*convert_version"):
        backward(model, {"y": "seed"}, ["x"])


def test_runtime_gather_indices_before_opset_16_are_refused():
    model = make_model([node("Gather", ["x", "i"])], {"x": rand(4, 3), "i": ints(1, 2)}, {}, ["y"], opset=13)
    with pytest.raises(NotDifferentiable, match=r"^no gradient for Gather: indices that are not constants need "
                                                r"opset 16 .*\(node the_Gather, output y\)$"):
        backward(model, {"y": "seed"}, ["x"])


def test_wanted_tensor_off_the_path_is_an_error():
    model = make_model([node("Relu", ["x"]), node("Sigmoid", ["z"], ("s",))], {"x": rand(2, 3), "z": rand(2, 3)}, {},
                       ["y", "s"])
    with pytest.raises(ValueError, match="no path from z"):
        backward(model, {"y": "seed"}, ["z"])


# ---- whole models ---------------------------------------------------------------------------------------------------

WHOLE = {"resnet18": "layer4", "mobilenet_v3_small": "features"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WHOLE))
def test_whole_torchvision_model(name, tmp_path):
    """torch.onnx.export of the plain model, gradients from the logits (one-hot seed) to the input and to the target
    layer's output (the last global pool's input): torch autograd in float64; guided: the torch exporter's reference."""
    import torchvision
    from onnxcam.exporter.layers import LayerInfo
    from onnxcam.exporter.reference import reference_outputs

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18, input_names=["input"],
                      output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    plain = onnx.shape_inference.infer_shapes(onnx.load(path), data_prop=True)
    feature = [n for n in plain.graph.node if n.op_type == "ReduceMean"][-1].input[0]
    classes = torch.tensor([3, 7])
    seed = F.one_hot(classes, 1000).float().numpy()
    gradients = backward(plain, {"logits": "seed"}, ["input", feature])
    guided = backward(plain, {"logits": "seed"}, ["input"], guided=True, prefix="guided")
    assert_every_node_is_used(gradients)
    assert_every_node_is_used(guided)
    explain = onnx.ModelProto.FromString(plain.SerializeToString())
    explain.graph.input.append(helper.make_tensor_value_info("seed", TensorProto.FLOAT, ["batch", 1000]))
    outputs = [gradients.gradients["input"], gradients.gradients[feature], guided.gradients["input"]]
    for part in (gradients, guided):
        explain.graph.node.extend(part.nodes)
        explain.graph.initializer.extend(part.initializers)
    types = {info.name: info.type for info in [*plain.graph.input, *plain.graph.value_info]}
    explain.graph.output.extend(onnx.ValueInfoProto(name=gradient, type=types[tensor])
                                for gradient, tensor in zip(outputs, ["input", feature, "input"], strict=True))
    onnx.checker.check_model(explain, full_check=True)
    input_gradients, feature_gradients, guided_gradients = session(explain).run(
        outputs, {"input": x.numpy(), "seed": seed})

    reference = model.double()
    captured = {}
    hook = reference.get_submodule(WHOLE[name]).register_forward_hook(lambda m, i, o: captured.update(f=o))
    x64 = x.double().requires_grad_(True)
    score = (reference(x64) * torch.tensor(seed, dtype=torch.float64)).sum()
    hook.remove()
    expected_input, expected_feature = torch.autograd.grad(score, [x64, captured["f"]])
    assert relative_error(input_gradients, expected_input.numpy()) <= 1e-4
    assert relative_error(feature_gradients, expected_feature.numpy()) <= 1e-4
    layer = LayerInfo(WHOLE[name], "module", None, 1, 0)
    expected_guided = reference_outputs(model.float(), layer, x, classes, guided=True)["input_gradients"]
    assert relative_error(guided_gradients, expected_guided.numpy()) <= 1e-3
