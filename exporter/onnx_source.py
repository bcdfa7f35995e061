"""`--model onnx:MODEL.onnx`: a forward-only ONNX classifier (Keras, TensorFlow, PyTorch, PaddlePaddle, a model zoo)
made into an explain graph with the contract of `onnxcam export`'s, without torch: the gradients are built on the ONNX
graph itself (exporter/vjp.py).

The explain graph takes `input` [N, 3, H, W] as every explain graph does; a channels-last model (Keras, TensorFlow)
gets a Transpose in front, and a channels-last target tensor one behind, so the runner serves it unchanged. A final
Softmax (or Sigmoid) is cut: the class scores are its input, as Keras' Grad-CAM recipe sets the last layer's
activation to None.
"""

from __future__ import annotations

import ast
import copy
import difflib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.parity import compare, format_parity
from onnxcam.exporter.specs import ONNX_PREFIX
from onnxcam.exporter.vjp import MIN_OPSET, NotDifferentiable, backward, differentiable_ops
from onnxcam.exporter.write import check_session, publish, stage, staging_folder
from onnxcam.runner import __version__
from onnxcam.runner.model.graph import OUTPUTS, GraphInfo, Preprocessing, external_data_path
from onnxcam.runner.size import Size

OPSET = 18  # what a model older than the gradient builder's MIN_OPSET is converted to
# The operator semantics that make a 4-D output NCHW (ONNX defines them so), and the ops that keep their 4-D input's
# layout; a Transpose permutes it. Anything else leaves a tensor's layout unknown: not offered as a target layer.
NCHW_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
                      "InstanceNormalization", "LRN", "GlobalAveragePool", "GlobalMaxPool"})
SAME_LAYOUT_OPS = frozenset({"Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish",
                             "Tanh", "Gelu", "Erf", "Softplus", "Mish", "Identity", "Dropout", "Cast", "Add", "Sub",
                             "Mul", "Div", "Sqrt", "Pow", "Neg", "Exp", "Abs", "Max", "Min", "Sum", "Concat", "Pad",
                             "Slice"})
SCORE_ACTIVATIONS = {"Softmax": "softmax", "Sigmoid": "sigmoid"}  # a final op that is cut, and what it was
CONTRACT_NAMES = frozenset({"input", "target", *OUTPUTS})
# The gate: finite differences of the class score along random directions against the graph's gradients.
CHANGES, MAX_STEP, FRACTIONS = (1e-3, 1e-4, 1e-5), 0.1, (1.0, 0.1)  # see _directional
DIRECTIONS = 3
GRADIENT_TOLERANCE, GRADIENT_COSINE = 5e-2, 0.999  # ResNet-18 layer1..4: 2.4e-4 to 5.2e-4; VGG-11: 1.6e-2
EXACT_TOLERANCE = 1e-5  # logits and activations: the same ops as the source model


@dataclass
class Tensor:
    """A 4-D tensor of the model's forward path with a known layout: a candidate target layer."""

    name: str
    op: str  # the op type of its producer
    node: str  # its producer's name
    scopes: tuple[str, ...]  # the PyTorch modules it belongs to (torch.onnx's name scopes), or the node name's parts
    shape: tuple[int, ...]  # without the batch
    layout: str  # NCHW | NHWC
    order: int  # its producer's position in the graph

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the map the explain graph outputs for it."""
        if self.layout == "NCHW":
            return self.shape[0], self.shape[1], self.shape[2]
        return self.shape[2], self.shape[0], self.shape[1]

    @property
    def is_feature_map(self) -> bool:
        return self.map_shape[1] * self.map_shape[2] > 1


@dataclass
class PlainModel:
    """A plain ONNX classifier, its shapes inferred, with what the explain graph needs to know about it."""

    spec: str
    path: Path
    proto: onnx.ModelProto
    input: str
    layout: str  # NCHW | NHWC: the model input's
    size: Size
    logits: str  # the class scores: the model's output, or the input of its final Softmax/Sigmoid
    cut: str | None  # softmax | sigmoid: the final activation that was cut, if any
    num_classes: int
    tensors: list[Tensor] = field(default_factory=list)
    fixed_batch: int | None = None  # the batch size the file fixed, made symbolic here


def _dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    shape = value.type.tensor_type.shape
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in shape.dim)


def _path_of(spec: str) -> Path:
    path = Path(spec.removeprefix(ONNX_PREFIX))
    if not path.is_file():
        raise ExportError(f"--model {spec}: no such file")
    return path


def _read(path: Path, spec: str) -> onnx.ModelProto:
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf raises several types for a file that is not ONNX
        raise ExportError(f"--model {spec}: not an ONNX model ({type(error).__name__}: {str(error)[:120]})") from None
    if any(prop.key == "target_layer" for prop in proto.metadata_props):
        raise ExportError(f"--model {spec}: already an onnxcam explain graph; give the plain model")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, OPSET)
        except Exception as error:  # noqa: BLE001 - the converter raises bare RuntimeErrors
            raise ExportError(f"--model {spec}: opset {opset} does not convert to {OPSET} ({str(error)[:120]}); "
                              f"export the model with opset {OPSET}") from None
    return proto


def _image_input(proto: onnx.ModelProto, spec: str) -> onnx.ValueInfoProto:
    constants = {tensor.name for tensor in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in constants]
    if len(inputs) != 1 or len(_dims(inputs[0])) != 4:
        described = ", ".join(f"{v.name} {list(_dims(v))}" for v in inputs)
        raise ExportError(f"--model {spec}: expected one image input [N, 3, H, W] or [N, H, W, 3], found {described}")
    if inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ExportError(f"--model {spec}: input {inputs[0].name} is not float32; onnxcam feeds normalised float "
                          "images")
    return inputs[0]


def _layout(dims: tuple[int | None, ...], given: str | None, spec: str) -> str:
    if given:
        return given.upper()
    if dims[1] == 3 and dims[3] != 3:
        return "NCHW"
    if dims[3] == 3 and dims[1] != 3:
        return "NHWC"
    raise ExportError(f"--model {spec}: cannot tell the input's layout from its shape {list(dims)}; give --layout "
                      "nchw or nhwc")


def _fix_input(value: onnx.ValueInfoProto, layout: str, size: Size | None, spec: str) -> tuple[Size, int | None]:
    """Makes the batch symbolic and the spatial size static (from the file or --input-size); returns the size and
    the batch size the file had fixed, if any."""
    dims = value.type.tensor_type.shape.dim
    spatial = (1, 2) if layout == "NHWC" else (2, 3)
    channels = 3 if layout == "NHWC" else 1
    if dims[channels].HasField("dim_value") and dims[channels].dim_value != 3:
        raise ExportError(f"--model {spec}: input {value.name} has {dims[channels].dim_value} channels; onnxcam feeds "
                          "3-channel images")
    dims[channels].dim_value = 3
    stored = tuple(dims[axis].dim_value if dims[axis].HasField("dim_value") else None for axis in spatial)
    if size is None and None in stored:
        raise ExportError(f"--model {spec}: the input's height and width are not fixed in the file; give "
                          "--input-size HxW")
    chosen = size or Size(*stored)
    if size and None not in stored and tuple(size) != stored:
        raise ExportError(f"--input-size {size.height}x{size.width}: {spec} fixes its input at "
                          f"{stored[0]}x{stored[1]}")
    for axis, extent in zip(spatial, chosen, strict=True):
        dims[axis].dim_value = extent
    fixed = dims[0].dim_value if dims[0].HasField("dim_value") else None
    dims[0].dim_param = "batch"
    return chosen, fixed


def _infer(proto: onnx.ModelProto, spec: str) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as error:  # noqa: BLE001 - onnx raises InferenceError and others
        raise ExportError(f"--model {spec}: ONNX shape inference fails ({str(error).splitlines()[0][:160]})") from None


def _probe(proto: onnx.ModelProto, names: list[str], input_name: str, layout: str, size: Size,
           batches: tuple[int, ...]) -> list[list[np.ndarray]]:
    """The values of `names` in runs of the model on zero images, one run per batch size."""
    probe = copy.deepcopy(proto)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    session = check_session(probe.SerializeToString())
    return [session.run(names, {input_name: np.zeros((batch, *size, 3) if layout == "NHWC" else (batch, 3, *size),
                                                     np.float32)}) for batch in batches]


def _run_shapes(proto: onnx.ModelProto, input_name: str, layout: str, size: Size) -> onnx.ModelProto:
    """Where shape inference leaves a float tensor's size unknown (padding computed from Shape ops at run time, as
    efficientnet-lite's TorchScript export does), one run at batch 2 tells it: axis 0 stays the batch where it is 2,
    every other extent becomes static (the gradient builder needs them)."""
    graph = proto.graph
    known = {value.name: value for value in [*graph.input, *graph.value_info, *graph.output]}
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
    unsure = [name for node in graph.node for name in node.output if name and (
        name not in known or (known[name].type.tensor_type.elem_type in floats
                              and None in _dims(known[name])[1:]))]
    if not unsure:
        return proto
    [values] = _probe(proto, unsure, input_name, layout, size, (2,))
    for name, value in zip(unsure, values, strict=True):
        if value.dtype.kind != "f":
            continue
        info = helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                             ["batch" if axis == 0 and extent == 2 else extent
                                              for axis, extent in enumerate(value.shape)])
        if name in known and known[name] in graph.value_info:
            known[name].CopyFrom(info)
        elif name not in known:
            graph.value_info.append(info)
    return proto


def _fold_slice_bounds(proto: onnx.ModelProto, input_name: str, layout: str, size: Size) -> None:
    """Slice bounds computed from shapes at run time (ShuffleNet's channel split, Swin's windows) become constants
    where they are the same at batch 2 and 3: the gradient builder needs them constant."""
    graph = proto.graph
    constants = {tensor.name for tensor in graph.initializer}
    computed = sorted({name for node in graph.node if node.op_type == "Slice" for name in node.input[1:]
                       if name and name not in constants})
    if not computed:
        return
    runs = _probe(proto, computed, input_name, layout, size, (2, 3))
    fixed = {name: numpy_helper.from_array(first, f"{name}/onnxcam_folded")
             for name, first, second in zip(computed, *runs, strict=True) if np.array_equal(first, second)}
    graph.initializer.extend(fixed.values())
    for node in graph.node:
        if node.op_type == "Slice":
            node.input[1:] = [fixed[name].name if name in fixed else name for name in node.input[1:]]


def _shapes(proto: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    values = [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]
    return {value.name: _dims(value) for value in values if value.type.HasField("tensor_type")}


def _producers(graph: onnx.GraphProto) -> dict[str, tuple[int, onnx.NodeProto]]:
    return {output: (index, node) for index, node in enumerate(graph.node) for output in node.output}


def _logits(proto: onnx.ModelProto, shapes: dict, spec: str) -> tuple[str, str | None]:
    """The class scores [N, K]: the output, or the input of a final Softmax/Sigmoid (through Identity)."""
    graph = proto.graph
    if len(graph.output) != 1:
        names = ", ".join(output.name for output in graph.output)
        raise ExportError(f"--model {spec}: {len(graph.output)} outputs ({names}); onnxcam explains a classifier "
                          "with one output [N, classes]")
    producers = _producers(graph)
    name = graph.output[0].name
    while name in producers and producers[name][1].op_type == "Identity":
        name = producers[name][1].input[0]
    cut = None
    node = producers.get(name, (0, None))[1]
    if node is not None and node.op_type in SCORE_ACTIVATIONS:
        name, cut = node.input[0], SCORE_ACTIVATIONS[node.op_type]
    dims = shapes.get(name, ())
    if len(dims) < 2 or any(extent != 1 for extent in dims[2:]) or dims[1] is None:
        raise ExportError(f"--model {spec}: the output {graph.output[0].name} has shape {list(dims)}; onnxcam needs "
                          "class scores [N, classes]")
    return name, cut


def _layouts(graph: onnx.GraphProto, shapes: dict, start: str, layout: str) -> dict[str, str]:
    """Each 4-D tensor's layout where the ops define it (NCHW_OPS), carry it (SAME_LAYOUT_OPS) or permute it."""
    known = {start: layout}
    for node in graph.node:
        if not node.output or len(shapes.get(node.output[0], ())) != 4:
            continue
        if node.op_type in NCHW_OPS:
            known[node.output[0]] = "NCHW"
        elif node.op_type == "Transpose" and node.input[0] in known:
            perm = next(list(a.ints) for a in node.attribute if a.name == "perm")
            known[node.output[0]] = "".join(known[node.input[0]][axis] for axis in perm)
        elif node.op_type in SAME_LAYOUT_OPS:
            seen = {known[name] for name in node.input if name in known}
            if len(seen) == 1:
                known[node.output[0]] = seen.pop()
    return known


def _on_path(graph: onnx.GraphProto, start: str, end: str) -> set[str]:
    """Tensors computed from `start` that `end` depends on."""
    after = {start}
    for node in graph.node:
        if any(name in after for name in node.input) and node.op_type not in ("Shape", "Size"):
            after.update(node.output)
    producers = _producers(graph)
    before, todo = set(), [end]
    while todo:
        name = todo.pop()
        if name in before:
            continue
        before.add(name)
        if name in producers:
            todo.extend(producers[name][1].input)
    return after & before


def _input_views(graph: onnx.GraphProto, start: str) -> set[str]:
    """The input and what only re-lays it out (a channels-last model's first Transpose): no feature map."""
    views = {start}
    for node in graph.node:
        if node.op_type in ("Transpose", "Identity", "Cast") and node.input and node.input[0] in views:
            views.update(node.output)
    return views


def _scopes(node: onnx.NodeProto) -> tuple[str, ...]:
    """The PyTorch modules a node belongs to (torch.onnx records them), or the parts of its name before the last
    (TorchScript exporter: `/layer4/layer4.1/relu/Relu`; Keras, tf2onnx: `model/block14_sepconv2_act/Relu`)."""
    props = {prop.key: prop.value for prop in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" in props:
        try:
            names = [str(name) for name in ast.literal_eval(props["pkg.torch.onnx.name_scopes"])]
        except (ValueError, SyntaxError, TypeError):  # a malformed record only loses the module names
            names = []
        return tuple(name for name in names[1:-1] if name)
    return tuple(part for part in node.name.replace(":", "/").split("/")[:-1] if part)


def load_plain_model(spec: str, layout: str | None = None, input_size: Size | None = None) -> PlainModel:
    """Read, check and shape-infer a plain ONNX classifier; list its candidate target tensors."""
    path = _path_of(spec)
    proto = _read(path, spec)
    value = _image_input(proto, spec)
    chosen = _layout(_dims(value), layout, spec)
    size, fixed = _fix_input(value, chosen, input_size, spec)
    for output in proto.graph.output:  # the batch of the output follows the input's
        dims = output.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and fixed is not None and dims[0].dim_value == fixed:
            dims[0].dim_param = "batch"
    del proto.graph.value_info[:]
    proto = _run_shapes(_infer(proto, spec), value.name, chosen, size)
    _fold_slice_bounds(proto, value.name, chosen, size)
    shapes = _shapes(proto)
    logits, cut = _logits(proto, shapes, spec)
    graph = proto.graph
    layouts = _layouts(graph, shapes, value.name, chosen)
    path_tensors = _on_path(graph, value.name, logits) - _input_views(graph, value.name)
    tensors = []
    for index, node in enumerate(graph.node):
        name = node.output[0] if node.output else ""
        if name in path_tensors and layouts.get(name) in ("NCHW", "NHWC") and None not in shapes[name][1:]:
            tensors.append(Tensor(name, node.op_type, node.name or f"#{index}", _scopes(node),
                                  tuple(shapes[name][1:]), layouts[name], index))
    return PlainModel(spec=spec, path=path, proto=proto, input=value.name, layout=chosen, size=size, logits=logits,
                      cut=cut, num_classes=int(shapes[logits][1]), tensors=tensors, fixed_batch=fixed)


def candidates(plain: PlainModel) -> list[Tensor]:
    return [tensor for tensor in plain.tensors if tensor.is_feature_map]


def auto_tensor(plain: PlainModel) -> Tensor:
    """The last feature map (h*w > 1) before the head."""
    maps = candidates(plain)
    if not maps:
        raise ExportError(f"--layer auto: {plain.spec} has no 4-D feature map of known layout with spatial size > 1 "
                          "on its path to the logits; onnxcam explains models with one")
    return maps[-1]


def resolve_tensor(plain: PlainModel, name: str) -> Tensor:
    """`auto`; a tensor's name; a node's name (its output); or a layer (a PyTorch module, a Keras layer): the last
    tensor it outputs. Fails with one line listing the closest names."""
    if name == "auto":
        return auto_tensor(plain)
    maps = candidates(plain)
    layer = re.compile(rf"{re.escape(name)}(_\d+)?")  # Keras and TensorFlow number a scope met twice: name_1
    for matches in ([t for t in plain.tensors if t.name == name], [t for t in plain.tensors if t.node == name],
                    [t for t in maps if any(layer.fullmatch(scope) for scope in t.scopes)]):
        if matches:
            chosen = matches[-1]
            if not chosen.is_feature_map:
                raise ExportError(f"--layer {name}: tensor {chosen.name} has shape {list(chosen.shape)}, no spatial "
                                  "extent; pick a feature map (see `onnxcam layers`)")
            return chosen
    known = sorted({t.name for t in maps} | {scope for t in maps for scope in t.scopes})
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
    hint = f"closest: {', '.join(close)}" if close else "run `onnxcam layers --model ...` for the list"
    raise ExportError(f"--layer {name}: no feature map of that name in {plain.spec}; {hint}")


def describe(tensor: Tensor) -> str:
    scope = f" in {tensor.scopes[-1]}" if tensor.scopes else ""
    layout = f", channels-last {list(tensor.shape)} ->" if tensor.layout == "NHWC" else ","
    return f"{tensor.name} ({tensor.op}{scope}{layout} map {list(tensor.map_shape)})"


class _Graph:
    """Appends nodes and constants with names of their own to a graph."""

    def __init__(self, graph: onnx.GraphProto, prefix: str = "onnxcam/"):
        self.graph, self.prefix, self.count = graph, prefix, 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{hint}_{self.count}"

    def const(self, value, dtype=np.int64) -> str:
        name = self.name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attributes) -> str:
        output = output or self.name(op_type.lower())
        self.graph.node.append(helper.make_node(op_type, list(inputs), [output], name=self.name(op_type), **attributes))
        return output


def _rename(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = names.get(value.name, value.name)


def _batch_value(name: str, dims: tuple[int, ...], elem_type=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, ["batch", *dims])


@dataclass
class _Built:
    proto: onnx.ModelProto
    outputs: list[str]


def build_explain_graph(plain: PlainModel, target: Tensor, guided: bool, saliency: bool) -> _Built:
    """The plain model plus: `input` [N, 3, H, W] (transposed to the model's layout), the class score's seed from
    `target` [N] (-1: the top class), and the backward passes (plain; guided if asked), with the outputs of the
    explain-graph contract."""
    proto = copy.deepcopy(plain.proto)
    graph = proto.graph
    names = {n for node in graph.node for n in [*node.input, *node.output]} | {v.name for v in graph.input}
    renamed = {name: f"model/{name}" for name in names & CONTRACT_NAMES}
    _rename(graph, renamed)
    model_input, logits = renamed.get(plain.input, plain.input), renamed.get(plain.logits, plain.logits)
    tensor = renamed.get(target.name, target.name)
    height, width = plain.size
    b = _Graph(graph)
    del graph.input[:]
    graph.input.extend([_batch_value("input", (3, height, width)), _batch_value("target", (), TensorProto.INT64)])
    del graph.output[:]
    forward = list(graph.node)
    del graph.node[:]
    if plain.layout == "NHWC":
        b.op("Transpose", "input", output=model_input, perm=[0, 2, 3, 1])
    else:
        b.op("Identity", "input", output=model_input)
    graph.node.extend(forward)
    scores = b.op("Flatten", logits, axis=1) if len(_shapes(plain.proto).get(plain.logits, ())) != 2 else logits
    b.op("Identity", scores, output="logits")
    top = b.op("ArgMax", scores, axis=1, keepdims=0)
    chosen = b.op("Where", b.op("Less", "target", b.const(0)), top, "target")
    seed = b.op("OneHot", chosen, b.const([plain.num_classes]), b.const([0.0, 1.0], np.float32), axis=-1)
    to_map = {"perm": [0, 3, 1, 2]} if target.layout == "NHWC" else {}
    b.op("Transpose" if to_map else "Identity", tensor, output="activations", **to_map)
    shaped = _infer(proto, plain.spec)
    del graph.value_info[:]
    graph.value_info.extend(shaped.graph.value_info)
    outputs = ["logits", "activations", "gradients"]
    try:
        plain_pass = backward(proto, {scores: seed}, [tensor, *(["input"] if saliency else [])], guided=False,
                              prefix="onnxcam_grad/")
        passes = [plain_pass]
        if guided:
            passes.append(backward(proto, {scores: seed}, ["input"], guided=True, prefix="onnxcam_guided/"))
    except NotDifferentiable as error:
        raise ExportError(_not_differentiable(plain, error)) from None
    for built in passes:
        graph.node.extend(built.nodes)
        graph.initializer.extend(built.initializers)
    b.op("Transpose" if to_map else "Identity", plain_pass.gradients[tensor], output="gradients", **to_map)
    if guided:
        b.op("Identity", passes[-1].gradients["input"], output="input_gradients")
        outputs.append("input_gradients")
    if saliency:
        b.op("Identity", plain_pass.gradients["input"], output="plain_input_gradients")
        outputs.append("plain_input_gradients")
    c, h, w = target.map_shape
    shapes = {"logits": (plain.num_classes,), "activations": (c, h, w), "gradients": (c, h, w),
              "input_gradients": (3, height, width), "plain_input_gradients": (3, height, width)}
    graph.output.extend(_batch_value(name, shapes[name]) for name in outputs)
    del graph.value_info[:]
    return _Built(proto, outputs)


def _not_differentiable(plain: PlainModel, error: NotDifferentiable) -> str:
    """One line: the op, its node, and the nearest layer after it from which Grad-CAM still works."""
    producers = _producers(plain.proto.graph)
    index = producers[error.output][0] if error.output in producers else -1
    later = [t for t in candidates(plain) if t.order > index]
    hint = (f"Grad-CAM still works from --layer {later[0].name} (after it) with --no-guided"
            if later else "no feature map follows it: the model's head cannot be differentiated here")
    return (f"{error}; onnxcam differentiates {', '.join(differentiable_ops())}; {hint}")


class _Source:
    """Runs the source model on NCHW inputs and returns the named tensors; `step` = (tensor, value) adds value to
    that tensor inside the model (the head's finite differences). One session per kind of run."""

    def __init__(self, plain: PlainModel, names: list[str]):
        self.plain, self.names, self.sessions = plain, names, {}

    def _session(self, tensor: str | None) -> ort.InferenceSession:
        if tensor not in self.sessions:
            proto = copy.deepcopy(self.plain.proto)
            graph = proto.graph
            if tensor is not None:
                moved = f"{tensor}/onnxcam_before_step"
                for node in graph.node:
                    node.output[:] = [moved if name == tensor else name for name in node.output]
                graph.node.append(helper.make_node("Add", [moved, "onnxcam_step"], [tensor]))
                graph.input.append(helper.make_empty_tensor_value_info("onnxcam_step"))
                graph.input[-1].type.tensor_type.elem_type = TensorProto.FLOAT
            del graph.output[:]
            graph.output.extend(helper.make_empty_tensor_value_info(name) for name in self.names)
            self.sessions[tensor] = check_session(proto.SerializeToString())
        return self.sessions[tensor]

    def __call__(self, x: np.ndarray, step: tuple[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        feeds = {self.plain.input: x.transpose(0, 2, 3, 1) if self.plain.layout == "NHWC" else x}
        if step is not None:
            feeds["onnxcam_step"] = step[1]
        session = self._session(step[0] if step else None)
        return dict(zip(self.names, session.run(self.names, feeds), strict=True))


def _as_map(array: np.ndarray, layout: str) -> np.ndarray:
    return array.transpose(0, 3, 1, 2) if layout == "NHWC" else array


def _directional(source: _Source, x: np.ndarray, chosen: np.ndarray, tensor: str,
                 base: np.ndarray, gradient: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The class score's slope along random directions in `tensor`: from the graph's gradient, and from central
    differences of the source model with the step added to that tensor.

    Three of each image's steps are set for the graph's slope to move its score by a fraction of its size (CHANGES;
    at most MAX_STEP of the tensor's root mean square), two are fractions of MAX_STEP of it (FRACTIONS: a score that
    is a small sum of large terms, as a random-weight RegNetX head's, rounds off more than its size says): float32
    rounding spoils the smallest, ReLU and max-pool kinks between the tensor and the logits the largest, so each
    direction keeps the difference nearest the slope. A wrong slope is far from all of them."""
    analytic, numeric = [], []
    rows, batch = np.arange(len(x)), len(x)
    flat = lambda array: array.astype(np.float64).reshape(batch, -1)  # noqa: E731
    score = np.abs(source(x)[source.plain.logits].reshape(batch, -1)[rows, chosen].astype(np.float64))
    largest = MAX_STEP * np.sqrt(np.mean(flat(base) ** 2, axis=1))
    along = flat(gradient) / np.maximum(np.linalg.norm(flat(gradient), axis=1, keepdims=True), 1e-30)
    for _ in range(DIRECTIONS):
        # half random, half the graph's own gradient: a random direction's slope alone cancels over a pooling head
        # (Inception-v3: cosine 0.75 with exact gradients), and a wrong gradient still shows in either half
        noise = rng.standard_normal(flat(base).shape)
        mixed = noise + along * np.linalg.norm(noise, axis=1, keepdims=True)
        direction = mixed.reshape(base.shape).astype(np.float32)
        slope = np.sum(flat(gradient) * flat(direction), axis=1)
        differences = []
        steps = [np.minimum(change * (score + 1e-6) / np.maximum(np.abs(slope), 1e-30), largest) for change in CHANGES]
        for step in steps + [fraction * largest for fraction in FRACTIONS]:
            scores = []
            for sign in (1, -1):
                moved = (sign * step.reshape(batch, *[1] * (base.ndim - 1)) * direction).astype(np.float32)
                scores.append(source(x, (tensor, moved))[source.plain.logits].reshape(batch, -1)[rows, chosen])
            differences.append((scores[0].astype(np.float64) - scores[1]) / (2 * step))
        differences = np.array(differences)
        numeric.append(differences[np.abs(differences - slope).argmin(axis=0), rows])
        analytic.append(slope)
    return np.concatenate(analytic), np.concatenate(numeric)


def gate(plain: PlainModel, built: _Built, staged: Path, target: Tensor
         ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Runs the staged explain graph on a random batch: logits and activations against the source model's own,
    gradients against central differences of the class score along random directions. Input gradients are not
    checked here: back through a whole network, a float32 step crosses too many ReLU and max-pool kinks for a
    difference to mean anything (and the guided rule is no derivative); tests/test_onnx_source.py holds both to
    the PyTorch exporter's. Returns the figures and the source model's logits and activations on that batch."""
    rng = np.random.default_rng(0)
    batch = 2
    x = rng.standard_normal((batch, 3, *plain.size)).astype(np.float32)
    targets = np.array([-1, plain.num_classes - 1], np.int64)
    session = check_session(staged)
    try:
        actual = dict(zip(built.outputs, session.run(built.outputs, {"input": x, "target": targets}), strict=True))
    except Exception as error:  # noqa: BLE001 - ORT's run errors: usually a batch size fixed inside the model
        fixed = (f"; the file fixed its batch size at {plain.fixed_batch}: export it with a dynamic batch axis"
                 if plain.fixed_batch else "")
        raise ExportError(f"the explain graph fails to run at batch {batch} ({str(error).splitlines()[0][:160]})"
                          f"{fixed}") from None
    source = _Source(plain, [plain.logits, target.name])
    outputs = source(x)
    expected = {"logits": outputs[plain.logits].reshape(batch, -1),
                "activations": _as_map(outputs[target.name], target.layout)}
    figures = compare({name: actual[name] for name in expected}, expected)
    chosen = np.where(targets < 0, expected["logits"].argmax(axis=1), targets)
    raw_gradient = actual["gradients"].transpose(0, 2, 3, 1) if target.layout == "NHWC" else actual["gradients"]
    slopes, differences = _directional(source, x, chosen, target.name, outputs[target.name], raw_gradient, rng)
    figures.update(compare({"gradients": slopes}, {"gradients": differences}))
    return figures, expected


def _gate_problem(name: str, figure: dict[str, float]) -> str:
    """Logits and activations are the source model's own ops (EXACT_TOLERANCE); gradients are held to the finite
    differences of `_directional`."""
    error = figure["relative_error"]
    if name != "gradients":
        return f"relative error {error:.2e} > {EXACT_TOLERANCE:.0e}" if not error <= EXACT_TOLERANCE else ""
    if not (error <= GRADIENT_TOLERANCE and figure["cosine"] >= GRADIENT_COSINE):
        return (f"relative error {error:.2e} (limit {GRADIENT_TOLERANCE}), cosine {figure['cosine']:.4f} (limit "
                f"{GRADIENT_COSINE}) against finite differences")
    return ""


def _gap_linear_head(plain: PlainModel, expected: dict[str, np.ndarray]) -> bool:
    """True when the scores are a Gemm/MatMul (+ bias) of the spatial mean of the target map: then CAM is exact."""
    graph = plain.proto.graph
    producers = _producers(graph)
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    name, bias = plain.logits, None
    while name in producers:
        node = producers[name][1]
        if node.op_type == "Add" and any(i in weights for i in node.input):
            bias = weights[next(i for i in node.input if i in weights)]
            name = next(i for i in node.input if i not in weights)
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in weights:
            matrix = weights[node.input[1]]
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attributes.get("transB"):
                matrix = matrix.T
            if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] in weights:
                bias = weights[node.input[2]]
            pooled = expected["activations"].astype(np.float64).mean(axis=(2, 3))
            if pooled.shape[1] != matrix.shape[0]:
                return False
            predicted = pooled @ matrix + (0 if bias is None else bias)
            scores = expected["logits"]
            return bool(np.abs(predicted - scores).max() <= 1e-5 * np.abs(scores).max())
        else:
            return False
    return False


def _convolutions(plain: PlainModel) -> dict[str, str]:
    """ONNX weight name -> the layer it belongs to (`onnxcam filters --layer`)."""
    names = {}
    for node in plain.proto.graph.node:
        if node.op_type == "Conv":
            scopes = _scopes(node)
            names[node.input[1]] = ".".join(scopes[-1:]) if scopes else node.name
    return names


def export_plain_model(plain: PlainModel, layer: str, out: Path, preprocessing: Preprocessing, labels: list[str],
                       guided: bool = True, multilabel: bool = False, saliency: bool = False, log=print) -> GraphInfo:
    """Build, check (`gate`) and write the explain graph of a plain ONNX classifier atomically."""
    started = time.perf_counter()
    target = resolve_tensor(plain, layer)
    log(f"target layer: {describe(target)}" + (" [auto]" if layer == "auto" else ""))
    if plain.cut:
        log(f"class scores: {plain.logits}, the input of the model's final {plain.cut}")
    labels = labels or [str(i) for i in range(plain.num_classes)]
    if len(labels) != plain.num_classes:
        raise ExportError(f"--labels: {len(labels)} names for a model with {plain.num_classes} classes")
    built = build_explain_graph(plain, target, guided, saliency)
    with staging_folder(out) as staging:
        staged = stage(built.proto, staging / out.name)
        figures, expected = gate(plain, built, staged, target)
        log(f"check (logits and activations vs the source model; gradients vs finite differences), relative error: "
            f"{format_parity(figures)}")
        for name, figure in figures.items():
            problem = _gate_problem(name, figure)
            if problem:
                raise ExportError(f"check failed: {name} {problem}; not writing {out}")
        producer = " ".join(filter(None, [plain.proto.producer_name, plain.proto.producer_version]))
        info = GraphInfo(
            preprocessing=preprocessing, labels=labels, target_layer=target.name,
            activation_shape=tuple(target.map_shape),
            output_activation="sigmoid" if multilabel or plain.cut == "sigmoid" else "softmax",
            outputs=built.outputs, gap_linear_head=_gap_linear_head(plain, expected), model=plain.spec,
            versions={"onnxcam": __version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                      **({"source": producer} if producer else {})},
            parity=figures, convolutions=_convolutions(plain), precision="f32",
        )
        for key, value in info.to_metadata().items():
            built.proto.metadata_props.add(key=key, value=value)
        onnx.save(built.proto, str(staged))
        publish(staging, out)
    size = sum(path.stat().st_size for path in (out, external_data_path(out)) if path.exists())
    log(f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return info
