"""Serving options for an explain graph, ONNX to ONNX (no torch; `onnxcam convert` and `onnxcam export` apply them):

- CAM maps in the graph: outputs `map_<method>` [N, h, w] computed from `activations` and `gradients` with the
  formulas of runner/methods/gradients.py (default options), so a GPU hands back a map per image instead of two
  [N, C, h, w] tensors (ResNet-50: 196 bytes instead of 800 kB);
- uint8 input: `input` becomes the resized picture as OpenCV holds it, uint8 [N, H, W, 3] BGR, and the graph does
  the cast, the channel order, the layout and the normalisation (a quarter of the float input's bytes). The float
  input stays inside the graph as `input_float`, which the runner's extra passes (perturbation methods, metrics)
  feed through the graph cut at that point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxcam.runner.inputs.preprocess import normalised
from onnxcam.runner.methods import METHODS
from onnxcam.runner.model.graph import (
    FLOAT_INPUT,
    GRAPH_MAP_METHODS,
    PREDICTED_MASK,
    TARGET_MASK,
    GraphInfo,
    external_data_path,
    map_output,
)

EPS = 1e-7  # xgradcam's, as runner/methods/gradients.py
TOLERANCE = 1e-5  # relative (max |difference| / max |value|) between the converted graph and the original + NumPy


class _Nodes:
    """Appends named nodes and constants to a graph, in order."""

    def __init__(self, graph: onnx.GraphProto, prefix: str):
        self.graph, self.prefix, self.count, self.nodes = graph, prefix, 0, []

    def name(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count}"

    def const(self, value, dtype=np.float32) -> str:
        name = self.name()
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attributes) -> str:
        output = output or self.name()
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=self.name(), **attributes))
        return output


def _formulas(nodes: _Nodes, methods: list[str], size: int) -> dict[str, str]:
    """method -> the name of its [N, h, w] map, built from activations (A) and gradients (G), `size` = h w.

    Sums over the map's positions are products with a column of ones (a GEMM's blocked sums), not ReduceSum/
    ReduceMean, whose one running float32 sum drifts over a large map (1.4e-5 over 112x112 against 2e-7).
    """
    a, g = "activations", "gradients"
    channels = nodes.const([1], np.int64)
    flat, column, planar = nodes.const([0, 0, -1], np.int64), nodes.const(np.ones((size, 1))), nodes.const(
        [0, 0, 1, 1], np.int64)
    shared: dict[str, str] = {}

    def once(key: str, build) -> str:
        if key not in shared:
            shared[key] = build()
        return shared[key]

    def over_positions(x: str) -> str:  # [N, C, h, w] -> the sum over h, w as [N, C, 1, 1]
        return nodes.op("Reshape", nodes.op("MatMul", nodes.op("Reshape", x, flat), column), planar)

    def weighted(weights: str, output: str) -> str:  # ReLU(sum_c w_c A_c)
        return nodes.op("Relu", nodes.op("ReduceSum", nodes.op("Mul", weights, a), channels, keepdims=0),
                        output=output)

    g_times_a = lambda: once("GA", lambda: nodes.op("Mul", g, a))  # noqa: E731
    sum_a = lambda: once("sumA", lambda: over_positions(a))  # noqa: E731
    built = {}
    for method in methods:
        output = map_output(method)
        if method == "gradcam":
            built[method] = weighted(nodes.op("Mul", over_positions(g), nodes.const(1 / size)), output)
        elif method == "gradcam++":  # alpha = 1 / (2 + sum(A) G) where G > 0 (the reduced form of eq. 19)
            denominator = nodes.op("Add", nodes.const(2.0), nodes.op("Mul", sum_a(), g))
            zero = nodes.op("Equal", denominator, nodes.const(0.0))
            safe = nodes.op("Where", zero, nodes.const(1.0), denominator)
            keep = nodes.op("And", nodes.op("Greater", g, nodes.const(0.0)), nodes.op("Not", zero))
            alpha = nodes.op("Where", keep, nodes.op("Div", nodes.const(1.0), safe), nodes.const(0.0))
            built[method] = weighted(over_positions(nodes.op("Mul", g, alpha)), output)
        elif method == "xgradcam":
            denominator = nodes.op("Add", sum_a(), nodes.const(EPS))
            built[method] = weighted(nodes.op("Div", over_positions(g_times_a()), denominator), output)
        elif method == "hirescam":
            built[method] = nodes.op("Relu", nodes.op("ReduceSum", g_times_a(), channels, keepdims=0), output=output)
        elif method == "layercam":
            product = nodes.op("Mul", nodes.op("Relu", g), a)
            built[method] = nodes.op("Relu", nodes.op("ReduceSum", product, channels, keepdims=0), output=output)
    return built


def add_maps(model: onnx.ModelProto, info: GraphInfo, methods: list[str]) -> None:
    """Adds the outputs map_<method> [N, h, w] (methods from GRAPH_MAP_METHODS) and records them in `info`."""
    unknown = [method for method in methods if method not in GRAPH_MAP_METHODS]
    if unknown:
        raise ValueError(f"--maps: {', '.join(unknown)} cannot be computed in the graph; choose from "
                         f"{', '.join(GRAPH_MAP_METHODS)}")
    new = [method for method in methods if method not in info.graph_maps]
    if not new:
        return
    graph = model.graph
    batch = next(o for o in graph.output if o.name == "activations").type.tensor_type.shape.dim[0]
    nodes = _Nodes(graph, "onnxcam_map_")
    _, h, w = info.activation_shape
    _formulas(nodes, new, h * w)
    graph.node.extend(nodes.nodes)
    for method in new:
        value = helper.make_tensor_value_info(map_output(method), TensorProto.FLOAT, [None, h, w])
        value.type.tensor_type.shape.dim[0].CopyFrom(batch)
        graph.output.append(value)
    info.graph_maps = [*info.graph_maps, *new]
    info.outputs = [*info.outputs, *(map_output(method) for method in new)]


def uint8_input(model: onnx.ModelProto, info: GraphInfo) -> None:
    """`input` becomes uint8 [N, H, W, 3] BGR; the float input [N, 3, H, W] is computed in the graph as
    `input_float` = (pixels (in the model's channel order) / 255 - mean) / std, with the runner's arithmetic."""
    if info.input_format == "uint8":
        return
    graph, pre = model.graph, info.preprocessing
    for node in graph.node:
        node.input[:] = [FLOAT_INPUT if name == "input" else name for name in node.input]
    old = next(value for value in graph.input if value.name == "input")
    batch = old.type.tensor_type.shape.dim[0]
    new = helper.make_tensor_value_info("input", TensorProto.UINT8, [None, *pre.size, 3])
    new.type.tensor_type.shape.dim[0].CopyFrom(batch)
    position = list(graph.input).index(old)
    graph.input.remove(old)
    graph.input.insert(position, new)
    old.name = FLOAT_INPUT  # its type and shape, where the runner cuts the graph for float inputs
    graph.value_info.append(old)
    nodes = _Nodes(graph, "onnxcam_input_")
    pixels = nodes.op("Cast", "input", to=TensorProto.FLOAT)
    if pre.channel_order == "RGB":
        pixels = nodes.op("Gather", pixels, nodes.const([2, 1, 0], np.int64), axis=3)
    planar = nodes.op("Transpose", pixels, perm=[0, 3, 1, 2])
    std, mean = np.asarray(pre.std, np.float32), np.asarray(pre.mean, np.float32)
    scale = nodes.const((np.float32(1 / 255) / std).reshape(1, 3, 1, 1))
    shift = nodes.const((mean / std).reshape(1, 3, 1, 1))
    nodes.op("Sub", nodes.op("Mul", planar, scale), shift, output=FLOAT_INPUT)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes.nodes, *old_nodes])
    info.input_format = "uint8"


def apply(model: onnx.ModelProto, info: GraphInfo, maps: list[str], uint8: bool) -> None:
    """Both options, then the metadata rewritten to match."""
    if maps:
        add_maps(model, info, maps)
    if uint8:
        uint8_input(model, info)
    del model.metadata_props[:]
    for key, value in info.to_metadata().items():
        model.metadata_props.add(key=key, value=value)


def _session(model: onnx.ModelProto | Path, folder: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def check(original: Path, converted: onnx.ModelProto, info: GraphInfo, batch: int = 4) -> dict[str, float]:
    """Runs both graphs on random pictures (targets: the top class and named ones) and returns, per output of the
    converted graph, its relative difference from the original graph's (maps: from the NumPy formulas over the
    original's activations and gradients)."""
    height, width = info.preprocessing.size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), np.uint8)
    targets = np.array([-1, 0, info.num_classes - 1, -1][:batch] * (batch // 4 + 1), np.int64)[:batch]
    folder = original.resolve().parent
    before = _session(original, folder)
    names = [o.name for o in before.get_outputs()]
    mask = {TARGET_MASK: PREDICTED_MASK} if info.task == "segmentation" else {}
    reference = dict(zip(names, before.run(names, {"input": normalised(pixels, info.preprocessing),
                                                   "target": targets, **mask}), strict=True))
    for method in info.graph_maps:
        reference[map_output(method)] = METHODS[method](reference, METHODS[method].defaults)
    after = _session(converted, folder)
    fed = pixels if info.input_format == "uint8" else normalised(pixels, info.preprocessing)
    outputs = [o.name for o in after.get_outputs()]
    actual = dict(zip(outputs, after.run(outputs, {"input": fed, "target": targets, **mask}), strict=True))
    actual, reference = ({name: value.astype(np.float64) if value.dtype.kind in "iu" else value  # label_map
                          for name, value in values.items()} for values in (actual, reference))
    return {name: float(np.abs(actual[name] - reference[name]).max() / (np.abs(reference[name]).max() or 1))
            for name in outputs}


def convert(source: Path, out: Path, maps: list[str], uint8: bool) -> tuple[GraphInfo, dict[str, float]]:
    """Writes `source` with the serving options as `out` once every output matches the original to TOLERANCE
    (ValueError naming the output otherwise). Weights in a side file stay there and are shared."""
    model = onnx.load(str(source), load_external_data=False)
    info = GraphInfo.from_metadata({p.key: p.value for p in model.metadata_props}, source=str(source))
    apply(model, info, maps, uint8)
    figures = check(source, model, info)
    worst = max(figures, key=figures.get)
    if figures[worst] > TOLERANCE:
        raise ValueError(f"{worst} differs from the original graph by {figures[worst]:.1e} (relative; limit "
                         f"{TOLERANCE:.0e}); not writing {out}")
    data = external_data_path(source)
    if data.exists() and out.resolve().parent != source.resolve().parent:
        raise ValueError(f"--out: {source} keeps its weights in {data.name}; write the converted graph into the "
                         "same folder, which shares them")
    onnx.save(model, str(out))
    return info, figures
