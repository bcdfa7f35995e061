"""Reverse-mode gradients (vector-Jacobian products) written in ONNX ops, over a plain ONNX classifier graph.

`backward(model, seeds, wanted)` returns the nodes that compute dS/d(tensor) for the wanted forward tensors, given
the seed gradients dS/d(seed tensor). Numpy and onnx only: it runs where the runner is installed, without torch.

One rule per op type in `RULES`: `rule(b, node, dys) -> dxs`, `dys` the gradients of the node's outputs (None where
no gradient reaches one of several outputs), `dxs` one entry per input (None: no gradient). A tensor is on the
gradient path when it is float-typed and computed from a wanted tensor, so shape arithmetic (Shape, Gather on
shapes, Cast to int, comparisons) never is. The backward structures follow the torch exporter's decompositions
(exporter/decompositions.py): ConvTranspose for Conv, a grouped ConvTranspose scatter for the pools, Expand/Div for
global pooling, so that both graphs cost the same to run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
# ops whose float output does not depend differentiably on their input (zero gradient almost everywhere)
ZERO_GRADIENT = {"Floor", "Ceil", "Round", "Sign", "RandomNormalLike", "RandomUniformLike", "EyeLike"}
# ops whose outputs are never float, whatever the type inference says
NOT_FLOAT = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less",
             "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf"}

MIN_OPSET = 11  # Clip's bounds and Pad's counts as inputs
Dim = int | str | None  # a static size, a symbolic one (the batch), or unknown


class NotDifferentiable(Exception):
    """An op on the gradient path that the builder has no rule for (or an attribute variant it does not support)."""

    def __init__(self, op_type: str, node: str, output: str, reason: str):
        super().__init__(f"{reason} (node {node}, output {output})")
        self.op_type, self.node, self.output, self.reason = op_type, node, output, reason


class _Unsupported(Exception):
    """Raised inside a rule; `backward` adds the node to make it a NotDifferentiable."""


@dataclass
class Backward:
    nodes: list[onnx.NodeProto]  # to append to the graph (after the forward nodes)
    initializers: list[onnx.TensorProto]  # constants they use
    gradients: dict[str, str]  # wanted forward tensor -> name of the tensor holding dS/d(it), same shape


class Builder:
    """Emits nodes and constants with unique names under `prefix`; answers static shapes, types and constant values."""

    def __init__(self, model: onnx.ModelProto, prefix: str, guided: bool):
        graph = model.graph
        self.prefix, self.guided = prefix, guided
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[Dim]] = {}
        for info in [*graph.input, *graph.value_info, *graph.output]:
            tensor_type = info.type.tensor_type
            if tensor_type.elem_type:
                self.types[info.name] = tensor_type.elem_type
            if tensor_type.HasField("shape"):
                self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                          for d in tensor_type.shape.dim]
        self.constants: dict[str, onnx.TensorProto] = {}  # read into `values` when a rule asks
        for initializer in graph.initializer:
            self.constants[initializer.name] = initializer
            self.types[initializer.name] = initializer.data_type
            self.shapes[initializer.name] = list(initializer.dims)
        self.values: dict[str, np.ndarray] = {}
        for node in graph.node:
            if node.op_type == "Constant" and len(node.attribute) == 1:
                value = _constant_value(node.attribute[0])
                if value is not None:
                    self.values[node.output[0]] = value
                    self.types[node.output[0]] = helper.np_dtype_to_tensor_dtype(value.dtype)
                    self.shapes[node.output[0]] = list(value.shape)
        self.used = {name for node in graph.node for name in [*node.input, *node.output, node.name]}
        self.used |= {info.name for info in [*graph.input, *graph.output, *graph.initializer]}
        self.count = 0
        self.runtime_shapes: dict[str, str] = {}
        self.cached_constants: dict[tuple, str] = {}
        self.live: set[str] = set()
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def is_live(self, name: str) -> bool:
        """On the gradient path: computed (in float) from a wanted tensor."""
        return name in self.live

    def fresh(self, hint: str) -> str:
        while True:
            self.count += 1
            name = f"{self.prefix}/{hint}_{self.count}"
            if name not in self.used:
                self.used.add(name)
                return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attributes) -> str | list[str]:
        names = [self.fresh(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.fresh(op_type + "_node"),
                                           **{k: v for k, v in attributes.items() if v is not None}))
        return names[0] if outputs == 1 else names

    def const(self, value, like: str | None = None, dtype=None) -> str:
        """An initializer holding `value`, in the numpy type of tensor `like` (or `dtype`)."""
        if like is not None:
            dtype = helper.tensor_dtype_to_np_dtype(self.elem_type(like))
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.cached_constants:
            self.cached_constants[key] = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(array, self.cached_constants[key]))
        return self.cached_constants[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))

    def elem_type(self, name: str) -> int:
        return self.types.get(name, TensorProto.FLOAT)

    def shape(self, name: str) -> list[Dim]:
        if name not in self.shapes:
            raise _Unsupported(f"the shape of {name} is unknown (run onnx.shape_inference first)")
        return self.shapes[name]

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def static_dims(self, name: str, axes: Sequence[int]) -> list[int]:
        """The sizes of `axes` of `name`, which must be static."""
        shape = self.shape(name)
        dims = [shape[axis] for axis in axes]
        if not all(isinstance(d, int) for d in dims):
            raise _Unsupported(f"dynamic size on axes {list(axes)} of {name} ({shape})")
        return dims

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant input (initializer or Constant node), or None."""
        if name in self.constants and name not in self.values:
            self.values[name] = numpy_helper.to_array(self.constants[name])
        return self.values.get(name)

    def static_value(self, name: str, what: str) -> np.ndarray:
        value = self.value(name)
        if value is None:
            raise _Unsupported(f"{what} is not a constant")
        return value

    def shape_of(self, name: str) -> str:
        """A tensor holding `name`'s shape: a constant where it is static, else a Shape op."""
        shape = self.shape(name) if name in self.shapes else [None]
        if all(isinstance(d, int) for d in shape):
            return self.ints(shape)
        if name not in self.runtime_shapes:
            self.runtime_shapes[name] = self.op("Shape", name)
        return self.runtime_shapes[name]

    def zeros_like(self, name: str, like: str | None = None) -> str:
        """Zeros of `name`'s shape, in the type of `like` (default: `name`'s)."""
        zero = helper.make_tensor("value", self.elem_type(like or name), [1], [0])
        return self.op("ConstantOfShape", self.shape_of(name), value=zero)

    def unbroadcast(self, grad: str, operand: str, like: str | list[Dim]) -> str:
        """Sum `grad` (shaped like the broadcast result `like`, a tensor or a shape) back to `operand`'s shape."""
        shape, out_shape = self.shape(operand), self.shape(like) if isinstance(like, str) else like
        lead = len(out_shape) - len(shape)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1 and out_shape[lead + i] != 1]
        if not axes:
            return grad
        grad = self.reduce("ReduceSum", grad, axes)
        return self.squeeze(grad, range(lead)) if lead else grad

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """A Reduce* node, its axes an input from the opset that made them one (ReduceSum 13, the others 18)."""
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            return self.op(op_type, x, self.ints(axes), keepdims=keepdims)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims)

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self._axes_op("Squeeze", x, axes)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self._axes_op("Unsqueeze", x, axes)

    def _axes_op(self, op_type: str, x: str, axes: Sequence[int]) -> str:
        """Squeeze or Unsqueeze; axes an input from opset 13."""
        return self.op(op_type, x, self.ints(axes)) if self.opset >= 13 else self.op(op_type, x, axes=list(axes))

    def axes_input(self, node: onnx.NodeProto, index: int) -> list[int] | None:
        """Axes given as attribute `axes` or as constant input `index` (None: absent)."""
        if "axes" in attributes(node):
            return list(attributes(node)["axes"])
        if len(node.input) > index and node.input[index]:
            return [int(a) for a in self.static_value(node.input[index], "axes").ravel()]
        return None


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(attribute: onnx.AttributeProto) -> np.ndarray | None:
    """A Constant node's value: tensor, float(s) or int(s); None for the sparse and string kinds."""
    if attribute.name == "value":
        return numpy_helper.to_array(attribute.t)
    kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    return np.asarray(helper.get_attribute_value(attribute), kinds[attribute.name]) if attribute.name in kinds else None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- element-wise ---------------------------------------------------------------------------------------------------

def _identity(b, node, dys):
    return [dys[0]]


def _cast(b, node, dys):
    return [b.op("Cast", dys[0], to=b.elem_type(node.input[0]))]


def _linear_range_rule(b: Builder, dy: str, inside: str) -> str:
    """dX = dY where x is in the linear range, else 0; guided: relu(dY) there."""
    passed = b.op("Relu", dy) if b.guided else dy
    return b.op("Where", inside, passed, b.const(0, like=dy))


def _relu(b, node, dys):
    x = node.input[0]
    return [_linear_range_rule(b, dys[0], b.op("Greater", x, b.const(0, like=x)))]


def _clip(b, node, dys):
    x = node.input[0]
    low = node.input[1] if len(node.input) > 1 and node.input[1] else None
    high = node.input[2] if len(node.input) > 2 and node.input[2] else None
    masks = ([b.op("Greater", x, low)] if low else []) + ([b.op("Less", x, high)] if high else [])
    if not masks:
        return [dys[0]]
    inside = masks[0] if len(masks) == 1 else b.op("And", *masks)
    return [_linear_range_rule(b, dys[0], inside)]


def _leaky_relu(b, node, dys):
    x, dy = node.input[0], dys[0]
    alpha = attributes(node).get("alpha", 0.01)
    return [b.op("Where", b.op("Greater", x, b.const(0, like=x)), dy, b.op("Mul", dy, b.const(alpha, like=dy)))]


def _prelu(b, node, dys):
    x, slope = node.input
    return [b.op("Where", b.op("Greater", x, b.const(0, like=x)), dys[0], b.op("Mul", dys[0], slope)), None]


def _elu(b, node, dys):
    """dY where x > 0, else dY (y + alpha)."""
    x, y = node.input[0], node.output[0]
    alpha = b.const(attributes(node).get("alpha", 1.0), like=x)
    return [b.op("Where", b.op("Greater", x, b.const(0, like=x)), dys[0], b.op("Mul", dys[0], b.op("Add", y, alpha)))]


def _softplus(b, node, dys):
    return [b.op("Mul", dys[0], b.op("Sigmoid", node.input[0]))]


def _abs(b, node, dys):
    return [b.op("Mul", dys[0], b.op("Sign", node.input[0]))]


def _sigmoid(b, node, dys):
    y = node.output[0]
    return [b.op("Mul", dys[0], b.op("Mul", y, b.op("Sub", b.const(1, like=y), y)))]


def _hard_sigmoid(b, node, dys):
    y, alpha = node.output[0], attributes(node).get("alpha", 0.2)
    inside = b.op("And", b.op("Greater", y, b.const(0, like=y)), b.op("Less", y, b.const(1, like=y)))
    return [b.op("Where", inside, b.op("Mul", dys[0], b.const(alpha, like=y)), b.const(0, like=y))]


def _hard_swish(b, node, dys):
    """torch's hardswish_backward: 0 below -3, x/3 + 1/2 up to 3 (inclusive), 1 above."""
    x = node.input[0]
    slope = b.op("Add", b.op("Mul", x, b.const(1 / 3, like=x)), b.const(0.5, like=x))
    slope = b.op("Where", b.op("LessOrEqual", x, b.const(3, like=x)), slope, b.const(1, like=x))
    slope = b.op("Where", b.op("Less", x, b.const(-3, like=x)), b.const(0, like=x), slope)
    return [b.op("Mul", dys[0], slope)]


def _erf_slope(b: Builder, x: str) -> str:
    """d erf(x)/dx = 2/sqrt(pi) exp(-x^2)."""
    return b.op("Mul", b.op("Exp", b.op("Neg", b.op("Mul", x, x))), b.const(2 / math.sqrt(math.pi), like=x))


def _erf(b, node, dys):
    return [b.op("Mul", dys[0], _erf_slope(b, node.input[0]))]


def _gelu(b, node, dys):
    x = node.input[0]
    if _text(attributes(node).get("approximate", "none")) == "tanh":
        k, c = math.sqrt(2 / math.pi), 0.044715
        x2 = b.op("Mul", x, x)
        inner = b.op("Mul", b.const(k, like=x), b.op("Mul", x, b.op("Add", b.const(1, like=x),
                                                                   b.op("Mul", x2, b.const(c, like=x)))))
        t = b.op("Tanh", inner)
        du = b.op("Mul", b.const(k, like=x), b.op("Add", b.const(1, like=x), b.op("Mul", x2, b.const(3 * c, like=x))))
        sech2 = b.op("Sub", b.const(1, like=x), b.op("Mul", t, t))
        slope = b.op("Add", b.op("Mul", b.const(0.5, like=x), b.op("Add", b.const(1, like=x), t)),
                     b.op("Mul", b.op("Mul", b.const(0.5, like=x), x), b.op("Mul", sech2, du)))
    else:  # 0.5 (1 + erf(x / sqrt 2)) + x phi(x)
        cdf = b.op("Mul", b.const(0.5, like=x),
                   b.op("Add", b.const(1, like=x), b.op("Erf", b.op("Mul", x, b.const(1 / math.sqrt(2), like=x)))))
        pdf = b.op("Mul", b.op("Exp", b.op("Mul", b.op("Mul", x, x), b.const(-0.5, like=x))),
                   b.const(1 / math.sqrt(2 * math.pi), like=x))
        slope = b.op("Add", cdf, b.op("Mul", x, pdf))
    return [b.op("Mul", dys[0], slope)]


def _sqrt(b, node, dys):
    return [b.op("Div", b.op("Mul", dys[0], b.const(0.5, like=dys[0])), node.output[0])]


def _exp(b, node, dys):
    return [b.op("Mul", dys[0], node.output[0])]


def _log(b, node, dys):
    return [b.op("Div", dys[0], node.input[0])]


def _tanh(b, node, dys):
    y = node.output[0]
    return [b.op("Mul", dys[0], b.op("Sub", b.const(1, like=y), b.op("Mul", y, y)))]


def _neg(b, node, dys):
    return [b.op("Neg", dys[0])]


def _reciprocal(b, node, dys):
    y = node.output[0]
    return [b.op("Neg", b.op("Mul", dys[0], b.op("Mul", y, y)))]


def _pow(b, node, dys):
    x, exponent = node.input
    value = b.value(exponent)
    if value is not None and value.size == 1:
        p = float(value.ravel()[0])
        if p == 1:
            return [dys[0], None]
        if p == 2:
            slope = b.op("Mul", x, b.const(2, like=x))
        else:
            slope = b.op("Mul", b.op("Pow", x, b.const(p - 1, like=x)), b.const(p, like=x))
    else:
        p = exponent if b.elem_type(exponent) == b.elem_type(x) else b.op("Cast", exponent, to=b.elem_type(x))
        slope = b.op("Mul", b.op("Pow", x, b.op("Sub", p, b.const(1, like=x))), p)
    return [b.unbroadcast(b.op("Mul", dys[0], slope), x, node.output[0]), None]


def _add(b, node, dys):
    """Add, Sum: dY to every operand on the path."""
    return [b.unbroadcast(dys[0], x, node.output[0]) if b.is_live(x) else None for x in node.input]


def _sub(b, node, dys):
    a, c = node.input
    y = node.output[0]
    return [b.unbroadcast(dys[0], a, y) if b.is_live(a) else None,
            b.unbroadcast(b.op("Neg", dys[0]), c, y) if b.is_live(c) else None]


def _mul(b, node, dys):
    a, c = node.input
    y = node.output[0]
    da = b.unbroadcast(b.op("Mul", dys[0], c), a, y) if b.is_live(a) else None
    dc = b.unbroadcast(b.op("Mul", dys[0], a), c, y) if b.is_live(c) else None
    return [da, dc]


def _div(b, node, dys):
    a, c = node.input
    y = node.output[0]
    da = b.unbroadcast(b.op("Div", dys[0], c), a, y) if b.is_live(a) else None
    dc = b.unbroadcast(b.op("Neg", b.op("Mul", dys[0], b.op("Div", y, c))), c, y) if b.is_live(c) else None
    return [da, dc]


def _max_min(b, node, dys):
    """Max/Min of two operands: the gradient goes to the one chosen, halved between equal ones (as torch's)."""
    if len(node.input) != 2:
        raise _Unsupported(f"{len(node.input)} operands")
    a, c = node.input
    y, dy = node.output[0], dys[0]
    chosen = b.op("Cast", b.op("Equal", a, y), to=b.elem_type(dy))
    share = b.op("Sub", chosen, b.op("Mul", b.op("Cast", b.op("Equal", a, c), to=b.elem_type(dy)),
                                     b.const(0.5, like=dy)))  # 1 where a alone is chosen, 1/2 on ties, else 0
    da = b.unbroadcast(b.op("Mul", dy, share), a, y) if b.is_live(a) else None
    dc = b.unbroadcast(b.op("Sub", dy, b.op("Mul", dy, share)), c, y) if b.is_live(c) else None
    return [da, dc]


def _mean(b, node, dys):
    share = b.op("Div", dys[0], b.const(len(node.input), like=dys[0]))
    return [b.unbroadcast(share, x, node.output[0]) if b.is_live(x) else None for x in node.input]


def _where(b, node, dys):
    condition, a, c = node.input
    zero = b.const(0, like=dys[0])
    y = node.output[0]
    return [None, b.unbroadcast(b.op("Where", condition, dys[0], zero), a, y) if b.is_live(a) else None,
            b.unbroadcast(b.op("Where", condition, zero, dys[0]), c, y) if b.is_live(c) else None]


# ---- linear algebra -------------------------------------------------------------------------------------------------

def _gemm(b, node, dys):
    attrs = attributes(node)
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
    a, w = node.input[:2]
    dy = dys[0]
    grads: list[str | None] = [None] * len(node.input)
    if b.is_live(a):  # dA' = alpha dY B'^T
        grads[0] = (b.op("Gemm", w, dy, alpha=alpha, transA=trans_b, transB=1) if trans_a
                    else b.op("Gemm", dy, w, alpha=alpha, transB=1 - trans_b))
    if b.is_live(w):  # dB' = alpha A'^T dY
        grads[1] = (b.op("Gemm", dy, a, alpha=alpha, transA=1, transB=trans_a) if trans_b
                    else b.op("Gemm", a, dy, alpha=alpha, transA=1 - trans_a))
    if len(node.input) > 2 and b.is_live(node.input[2]):
        grads[2] = b.unbroadcast(dy if beta == 1 else b.op("Mul", dy, b.const(beta, like=dy)), node.input[2],
                                 node.output[0])
    return grads


def _swap_last(b: Builder, x: str) -> str:
    rank = b.rank(x)
    return b.op("Transpose", x, perm=[*range(rank - 2), rank - 1, rank - 2])


def _matmul(b, node, dys):
    a, c = node.input
    y, dy = node.output[0], dys[0]
    shape_a, shape_c = b.shape(a), b.shape(c)
    if len(shape_a) == 1 or len(shape_c) == 1:
        if len(shape_a) == 1:
            raise _Unsupported("a 1-D first operand")
        column = b.unsqueeze(dy, [-1])  # [..., M, 1]
        da = b.op("Mul", column, c) if b.is_live(a) else None
        dc = None
        if b.is_live(c):  # the sum over every row of A weighted by dY: [1, rows] @ [rows, K]
            rows = b.op("Reshape", a, b.ints([-1, shape_c[0]]))
            dc = b.op("Reshape", b.op("MatMul", b.op("Reshape", dy, b.ints([1, -1])), rows), b.ints(shape_c))
        return [da, dc]
    batch = b.shape(y)[:-2]
    da = b.unbroadcast(b.op("MatMul", dy, _swap_last(b, c)), a, [*batch, *shape_a[-2:]]) if b.is_live(a) else None
    dc = b.unbroadcast(b.op("MatMul", _swap_last(b, a), dy), c, [*batch, *shape_c[-2:]]) if b.is_live(c) else None
    return [da, dc]


# ---- convolution and pooling ----------------------------------------------------------------------------------------

@dataclass
class _Window:
    """A conv/pool window over the spatial axes, padding made explicit (auto_pad resolved)."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[int]  # begins then ends
    size_in: list[int]
    size_out: list[int]

    @property
    def spatial(self) -> int:
        return len(self.kernel)

    def span(self, axis: int) -> int:
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1


def _window(b: Builder, node: onnx.NodeProto, kernel: list[int] | None = None) -> _Window:
    x, y, attrs = node.input[0], node.output[0], attributes(node)
    spatial = b.rank(x) - 2
    axes = range(2, 2 + spatial)
    kernel = list(attrs.get("kernel_shape") or kernel)
    window = _Window(kernel, list(attrs.get("strides", [1] * spatial)), list(attrs.get("dilations", [1] * spatial)),
                     list(attrs.get("pads", [0] * 2 * spatial)), b.static_dims(x, axes), b.static_dims(y, axes))
    auto_pad = _text(attrs.get("auto_pad", "NOTSET"))
    if auto_pad == "VALID":
        window.pads = [0] * 2 * spatial
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max(0, (-(-window.size_in[i] // window.strides[i]) - 1) * window.strides[i] + window.span(i)
                      - window.size_in[i]) for i in range(spatial)]
        small, large = [t // 2 for t in totals], [t - t // 2 for t in totals]
        window.pads = small + large if auto_pad == "SAME_UPPER" else large + small
    return window


def _transposed(b: Builder, dy: str, weight: str, window: _Window, group: int) -> str:
    """ConvTranspose of `dy` onto the input grid: pads and output_padding chosen so that its output is size_in."""
    n = window.spatial
    begins, ends, output_padding = window.pads[:n], [], []
    for i in range(n):
        full = (window.size_out[i] - 1) * window.strides[i] + window.span(i)
        end = max(0, full - begins[i] - window.size_in[i])  # ceil-mode windows hang over the padded edge
        ends.append(end)
        output_padding.append(window.size_in[i] + begins[i] + end - full)
    return b.op("ConvTranspose", dy, weight, kernel_shape=window.kernel, strides=window.strides,
                dilations=window.dilations, pads=begins + ends, output_padding=output_padding, group=group)


def _conv(b, node, dys):
    weight = node.input[1]
    window = _window(b, node, b.static_dims(weight, range(2, b.rank(weight))))
    return [_transposed(b, dys[0], weight, window, attributes(node).get("group", 1))]


def _max_pool(b, node, dys):
    """One-hot of each max's offset inside its window (from MaxPool's Indices), summed back by a grouped
    ConvTranspose: the torch exporter's `_max_pool2d_with_indices_backward`, scatter-free."""
    x, attrs = node.input[0], attributes(node)
    if b.rank(x) != 4:
        raise _Unsupported("only 2-D max pooling")
    if attrs.get("storage_order", 0):
        raise _Unsupported("storage_order=1")
    window = _window(b, node)
    channels, height, width = b.static_dims(x, [1, 2, 3])
    (out_h, out_w), (kh, kw), (sh, sw), (dh, dw) = window.size_out, window.kernel, window.strides, window.dilations
    if len(node.output) > 1 and node.output[1]:
        indices = node.output[1]
    else:
        _, indices = b.op("MaxPool", x, outputs=2, **attrs)
    plane = b.op("Mod", indices, b.ints([height * width]))  # ONNX Runtime's indices run over N, C, H, W
    # expected[k, i, j]: the flat index of window (i, j)'s k-th cell, -1 where it lies in the padding
    rows = (np.arange(out_h) * sh - window.pads[0])[None, :, None] + (np.arange(kh) * dh)[:, None, None]
    cols = (np.arange(out_w) * sw - window.pads[1])[None, None, :] + (np.arange(kw) * dw)[:, None, None]
    rows, cols = np.repeat(rows, kw, axis=0), np.tile(cols, (kh, 1, 1))
    expected = np.where((rows >= 0) & (rows < height) & (cols >= 0) & (cols < width), rows * width + cols, -1)
    one_hot = b.op("Equal", b.unsqueeze(plane, [2]), b.ints(expected[None, None]))
    values = b.op("Mul", b.op("Cast", one_hot, to=b.elem_type(dys[0])), b.unsqueeze(dys[0], [2]))
    values = b.op("Reshape", values, b.ints([0, channels * kh * kw, out_h, out_w]))
    kernels = np.tile(np.eye(kh * kw).reshape(kh * kw, 1, kh, kw), (channels, 1, 1, 1))
    return [_transposed(b, values, b.const(kernels, like=dys[0]), window, channels)]


def _average_pool(b, node, dys):
    """dY divided by each window's divisor, summed back by a grouped ConvTranspose with a ones kernel. The
    divisors are read from the op itself, AveragePool of ones over the valid cells (a constant the runtime folds),
    so count_include_pad, ceil_mode and the padding follow whatever the runtime's forward does."""
    x, attrs = node.input[0], attributes(node)
    window = _window(b, node)
    channels = b.static_dims(x, [1])[0]
    ones = b.const(np.ones([1, 1, *window.size_in]), like=x)
    valid = np.ones(())  # how many real (not padding) cells each window covers
    for axis in range(window.spatial):
        starts = np.arange(window.size_out[axis]) * window.strides[axis] - window.pads[axis]
        cells = starts[:, None] + np.arange(window.kernel[axis])[None, :] * window.dilations[axis]
        valid = np.multiply.outer(valid, ((cells >= 0) & (cells < window.size_in[axis])).sum(axis=1))
    scale = b.op("Div", b.op("AveragePool", ones, **attrs), b.const(np.maximum(valid, 1), like=x))
    kernels = b.const(np.ones([channels, 1, *window.kernel]), like=x)
    return [_transposed(b, b.op("Mul", dys[0], scale), kernels, window, channels)]


def _global_average_pool(b, node, dys):
    x = node.input[0]
    cells = math.prod(b.static_dims(x, range(2, b.rank(x))))
    return [b.op("Div", b.op("Expand", dys[0], b.shape_of(x)), b.const(cells, like=x))]


def _reduce_axes(b: Builder, node: onnx.NodeProto) -> list[int] | None:
    """The sorted, non-negative axes a Reduce* node reduces; None when it is the identity."""
    rank = b.rank(node.input[0])
    axes = b.axes_input(node, 1) if node.op_type != "GlobalMaxPool" else list(range(2, rank))
    if not axes:
        if attributes(node).get("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return sorted(axis % rank for axis in axes)


def _reduce_max(b, node, dys):
    """ReduceMax, GlobalMaxPool: dY spread evenly over the cells equal to the maximum (torch's amax rule)."""
    x, y = node.input[0], node.output[0]
    axes = _reduce_axes(b, node)
    if axes is None:
        return [dys[0]]
    keep = attributes(node).get("keepdims", 1) or node.op_type == "GlobalMaxPool"
    dy, y = (dys[0], y) if keep else (b.unsqueeze(dys[0], axes), b.unsqueeze(y, axes))
    chosen = b.op("Cast", b.op("Equal", x, y), to=b.elem_type(x))
    count = b.reduce("ReduceSum", chosen, axes)
    return [b.op("Mul", chosen, b.op("Div", dy, count))]


def _reduce(b, node, dys):
    """ReduceSum / ReduceMean: dY (with the reduced axes kept) expanded to the input's shape, / count for a mean."""
    x, attrs = node.input[0], attributes(node)
    axes = _reduce_axes(b, node)
    if axes is None:
        return [dys[0]]
    dy = dys[0] if attrs.get("keepdims", 1) else b.unsqueeze(dys[0], axes)
    grad = b.op("Expand", dy, b.shape_of(x))
    if node.op_type == "ReduceMean":
        dims = [b.shape(x)[axis] for axis in axes]
        if all(isinstance(d, int) for d in dims):
            count = b.const(math.prod(dims), like=x)
        else:  # the batch among the reduced axes: as many cells as the input has per output cell
            count = b.op("Cast", b.op("Div", b.op("Size", x), b.op("Size", node.output[0])), to=b.elem_type(x))
        grad = b.op("Div", grad, count)
    return [grad]


# ---- normalisation and softmax --------------------------------------------------------------------------------------

def _batch_norm(b, node, dys):
    """Inference: dX = dY * scale / sqrt(var + eps), per channel (axis 1)."""
    attrs = attributes(node)
    if attrs.get("training_mode", 0):
        raise _Unsupported("training_mode=1")
    x, scale, _, _, variance = node.input[:5]
    epsilon, rank = attrs.get("epsilon", 1e-5), b.rank(x)
    broadcast = [-1] + [1] * (rank - 2)
    if b.value(scale) is not None and b.value(variance) is not None:
        factor = b.value(scale).astype(np.float64) / np.sqrt(b.value(variance).astype(np.float64) + epsilon)
        factor = b.const(factor.reshape(broadcast), like=x)
    else:
        factor = b.op("Div", scale, b.op("Sqrt", b.op("Add", variance, b.const(epsilon, like=variance))))
        factor = b.op("Reshape", factor, b.ints(broadcast))
    return [b.op("Mul", dys[0], factor)]


def _layer_norm(b, node, dys):
    """dX = r (g - mean(g) - x^ mean(g x^)), g = dY * scale, x^ = (x - mean) r, means over the normalised axes."""
    attrs, x, scale = attributes(node), node.input[0], node.input[1]
    rank = b.rank(x)
    axes = range(attrs.get("axis", -1) % rank, rank)
    centred = b.op("Sub", x, b.reduce("ReduceMean", x, axes))
    variance = b.reduce("ReduceMean", b.op("Mul", centred, centred), axes)
    inverse = b.op("Reciprocal", b.op("Sqrt", b.op("Add", variance, b.const(attrs.get("epsilon", 1e-5), like=x))))
    normalised = b.op("Mul", centred, inverse)
    g = b.op("Mul", dys[0], scale)
    inner = b.op("Sub", b.op("Sub", g, b.reduce("ReduceMean", g, axes)),
                 b.op("Mul", normalised, b.reduce("ReduceMean", b.op("Mul", g, normalised), axes)))
    return [b.op("Mul", inner, inverse)]


def _softmax_axes(b: Builder, node: onnx.NodeProto) -> list[int]:
    """The axes a (Log)Softmax normalises over: one axis from opset 13, all from `axis` on before."""
    rank = b.rank(node.input[0])
    axis = attributes(node).get("axis", -1 if b.opset >= 13 else 1) % rank
    return [axis] if b.opset >= 13 else list(range(axis, rank))


def _softmax(b, node, dys):
    y, dy = node.output[0], dys[0]
    total = b.reduce("ReduceSum", b.op("Mul", dy, y), _softmax_axes(b, node))
    return [b.op("Mul", y, b.op("Sub", dy, total))]


def _log_softmax(b, node, dys):
    y, dy = node.output[0], dys[0]
    total = b.reduce("ReduceSum", dy, _softmax_axes(b, node))
    return [b.op("Sub", dy, b.op("Mul", b.op("Exp", y), total))]


# ---- shapes and indexing --------------------------------------------------------------------------------------------

def _reshape(b, node, dys):
    """Reshape, Flatten, Squeeze, Unsqueeze: dY reshaped to the input's shape."""
    return [b.op("Reshape", dys[0], b.shape_of(node.input[0]))]


def _transpose(b, node, dys):
    perm = attributes(node).get("perm") or list(reversed(range(b.rank(node.input[0]))))
    return [b.op("Transpose", dys[0], perm=[int(i) for i in np.argsort(perm)])]


def _expand(b, node, dys):
    return [b.unbroadcast(dys[0], node.input[0], node.output[0])]


def _tile(b, node, dys):
    x = node.input[0]
    repeats = [int(r) for r in b.static_value(node.input[1], "repeats")]
    shape = b.shape(x)
    if sum(not isinstance(d, int) for d in shape) > 1:
        raise _Unsupported(f"more than one dynamic size in {shape}")
    split = [v for r, d in zip(repeats, shape, strict=True) for v in (r, d if isinstance(d, int) else -1)]
    grad = b.op("Reshape", dys[0], b.ints(split))
    return [b.reduce("ReduceSum", grad, range(0, 2 * len(repeats), 2), keepdims=0)]


def _pad_or_crop(b: Builder, x: str, before: list[int], after: list[int]) -> str:
    """Pad `x` with zeros where a count is positive, crop where it is negative (static counts, every axis)."""
    if any(v < 0 for v in before + after):
        axes = [i for i, (lo, hi) in enumerate(zip(before, after, strict=True)) if lo < 0 or hi < 0]
        ends = [after[i] if after[i] < 0 else np.iinfo(np.int64).max for i in axes]
        x = b.op("Slice", x, b.ints([max(0, -before[i]) for i in axes]), b.ints(ends), b.ints(axes))
    if any(v > 0 for v in before + after):
        x = b.op("Pad", x, b.ints([max(0, v) for v in before + after]), mode="constant")
    return x


def _pad(b, node, dys):
    attrs = attributes(node)
    if _text(attrs.get("mode", "constant")) != "constant":
        raise _Unsupported(f"mode {_text(attrs['mode'])}")
    rank = b.rank(node.input[0])
    pads = b.value(node.input[1])
    if pads is None:  # computed at run time: crop by the same counts (negative pads)
        pads_input = node.input[1]
        axes = [node.input[3]] if len(node.input) > 3 and node.input[3] else []
        return [b.op("Pad", dys[0], b.op("Neg", pads_input), "", *axes, mode="constant")]
    pads = [int(p) for p in np.ravel(pads)]
    axes = b.axes_input(node, 3) if len(node.input) > 3 else None
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    before, after = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        before[axis], after[axis] = -pads[i], -pads[i + len(axes)]
    return [_pad_or_crop(b, dys[0], before, after)]


def _slice(b, node, dys):
    x = node.input[0]
    rank = b.rank(x)
    starts, ends = b.static_value(node.input[1], "starts"), b.static_value(node.input[2], "ends")
    axes = b.value(node.input[3]) if len(node.input) > 3 and node.input[3] else range(len(starts))
    steps = b.value(node.input[4]) if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    if axes is None or steps is None:
        raise _Unsupported("axes or steps are not constants")
    if any(int(s) != 1 for s in np.ravel(steps)):
        raise _Unsupported("steps other than 1")
    before, after = [0] * rank, [0] * rank
    for start, end, axis in zip(np.ravel(starts), np.ravel(ends), np.ravel(axes), strict=True):
        axis = int(axis) % rank
        size = b.static_dims(x, [axis])[0]
        start, end = (int(v) + size if v < 0 else int(v) for v in (start, end))
        start, end = min(max(start, 0), size), min(max(end, 0), size)
        before[axis], after[axis] = start, size - max(start, end)
    return [_pad_or_crop(b, dys[0], before, after)]


def _concat(b, node, dys):
    rank = b.rank(node.output[0])
    axis = attributes(node)["axis"] % rank
    sizes = [b.static_dims(x, [axis])[0] for x in node.input]
    if len(sizes) == 1:
        return [dys[0]]
    if b.opset >= 13:
        return b.op("Split", dys[0], b.ints(sizes), axis=axis, outputs=len(sizes))
    return b.op("Split", dys[0], axis=axis, split=sizes, outputs=len(sizes))


def _split(b, node, dys):
    grads = [dy if dy is not None else b.zeros_like(y) for y, dy in zip(node.output, dys, strict=True)]
    axis = attributes(node).get("axis", 0)
    return [b.op("Concat", *grads, axis=axis) if len(grads) > 1 else grads[0]]


def _gather(b, node, dys):
    """Constant indices picking one element or a contiguous run: padding. Other indices: ScatterND(add)."""
    data, indices = node.input
    rank = b.rank(data)
    axis = attributes(node).get("axis", 0) % rank
    value = b.value(indices)
    if value is not None and data in b.shapes and isinstance(b.shape(data)[axis], int):
        size = b.shape(data)[axis]
        flat = np.ravel(value) % size
        if flat.size and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
            dy = b.unsqueeze(dys[0], [axis]) if value.ndim == 0 else dys[0]
            before, after = [0] * rank, [0] * rank
            before[axis], after[axis] = int(flat[0]), size - int(flat[-1]) - 1
            return [_pad_or_crop(b, dy, before, after), None]
    if b.opset < 16:
        raise _Unsupported("indices that are not constants need opset 16 (ScatterND with reduction)")
    perm = [axis, *(i for i in range(rank) if i != axis)]
    moved = b.op("Transpose", data, perm=perm) if axis else data
    size = b.op("Gather", b.op("Shape", moved), b.ints([0]))
    index = b.unsqueeze(b.op("Mod", indices, size), [-1])  # negative indices count from the end
    index_rank = len(b.shape(indices))
    dy = dys[0]
    if axis:  # updates: index dims first, then the data's other axes in order
        out_perm = [*range(axis, axis + index_rank), *range(axis), *range(axis + index_rank, rank - 1 + index_rank)]
        dy = b.op("Transpose", dy, perm=out_perm)
    grad = b.op("ScatterND", b.zeros_like(moved, like=data), index, dy, reduction="add")
    return [b.op("Transpose", grad, perm=[int(i) for i in np.argsort(perm)]) if axis else grad, None]


RULES: dict[str, Callable[[Builder, onnx.NodeProto, list[str | None]], Sequence[str | None]]] = {
    "Identity": _identity, "Dropout": _identity, "Cast": _cast,
    "Relu": _relu, "Clip": _clip, "LeakyRelu": _leaky_relu, "Sigmoid": _sigmoid, "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish, "Erf": _erf, "Gelu": _gelu, "Sqrt": _sqrt, "Exp": _exp, "Log": _log, "Tanh": _tanh,
    "Neg": _neg, "Reciprocal": _reciprocal, "Pow": _pow, "PRelu": _prelu, "Elu": _elu, "Softplus": _softplus,
    "Abs": _abs,
    "Add": _add, "Sub": _sub, "Mul": _mul, "Div": _div, "Sum": _add, "Mean": _mean, "Max": _max_min, "Min": _max_min,
    "Where": _where,
    "Gemm": _gemm, "MatMul": _matmul,
    "Conv": _conv, "MaxPool": _max_pool, "AveragePool": _average_pool, "GlobalAveragePool": _global_average_pool,
    "ReduceMean": _reduce, "ReduceSum": _reduce, "ReduceMax": _reduce_max, "GlobalMaxPool": _reduce_max,
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm, "Softmax": _softmax,
    "LogSoftmax": _log_softmax,
    "Reshape": _reshape, "Flatten": _reshape, "Squeeze": _reshape, "Unsqueeze": _reshape, "Transpose": _transpose,
    "Expand": _expand, "Tile": _tile, "Pad": _pad, "Slice": _slice, "Concat": _concat, "Split": _split,
    "Gather": _gather,
}
MULTIPLE_OUTPUTS = {"Split"}  # rules that take gradients of more than the first output


def differentiable_ops() -> tuple[str, ...]:
    """The op types `backward` has a rule for."""
    return tuple(sorted(RULES))


def _live_tensors(b: Builder, graph: onnx.GraphProto, wanted: list[str]) -> set[str]:
    """The float tensors computed from a wanted tensor (in graph order, which ONNX keeps topological)."""
    live = set(wanted)
    for node in graph.node:
        if node.op_type in ZERO_GRADIENT or node.op_type in NOT_FLOAT or not any(x in live for x in node.input):
            continue
        live.update(y for y in node.output if y and b.types.get(y, TensorProto.FLOAT) in FLOAT_TYPES)
    return live


def backward(model: onnx.ModelProto, seeds: dict[str, str], wanted: list[str], *, guided: bool = False,
             prefix: str = "grad") -> Backward:
    """The nodes computing dS/d(tensor) for each `wanted` tensor, given `seeds`: forward tensor -> the tensor holding
    dS/d(it). Only the nodes on a path from a wanted tensor to a seed are differentiated; every new name starts with
    `prefix`. `model` must carry inferred shapes (static except the batch). guided: the guided-backprop rule at Relu
    and Clip, relu(dY) where the input is in the linear range."""
    b = Builder(model, prefix, guided)
    if b.opset < MIN_OPSET:
        raise ValueError(f"opset {b.opset}: the gradient builder needs opset {MIN_OPSET} or later; convert the model "
                         f"first (onnx.version_converter.convert_version(model, 17))")
    b.live = _live_tensors(b, model.graph, wanted)
    parts: dict[str, list[str]] = {}
    for tensor, seed in seeds.items():
        parts.setdefault(tensor, []).append(seed)

    def total(tensor: str) -> str | None:
        if tensor not in parts:
            return None
        if len(parts[tensor]) > 1:
            parts[tensor] = [b.op("Sum", *parts[tensor])]
        return parts[tensor][0]

    for index in reversed(range(len(model.graph.node))):
        node = model.graph.node[index]
        dys = [total(y) for y in node.output]
        if all(dy is None for dy in dys) or not any(b.is_live(x) for x in node.input):
            continue
        try:
            rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if rule is None:
                raise _Unsupported(f"no gradient for {node.op_type}")
            if node.op_type not in MULTIPLE_OUTPUTS and any(dy is not None for dy in dys[1:]):
                extra = next(i for i, dy in enumerate(dys) if i and dy is not None)
                raise _Unsupported(f"no gradient for {node.op_type} with respect to its output {extra}")
            grads = list(rule(b, node, dys))
            for i, x in enumerate(node.input):
                if not b.is_live(x):
                    continue
                if i >= len(grads) or grads[i] is None:
                    raise _Unsupported(f"no gradient for {node.op_type} with respect to input {i} ({x})")
                parts.setdefault(x, []).append(grads[i])
        except _Unsupported as error:
            reason = str(error) if str(error).startswith("no gradient") else f"no gradient for {node.op_type}: {error}"
            raise NotDifferentiable(node.op_type, node.name or f"#{index}", node.output[0], reason) from None
    missing = [tensor for tensor in wanted if tensor not in parts]
    if missing:
        raise ValueError(f"no path from {', '.join(missing)} to the seeds {', '.join(seeds)}")
    return Backward(b.nodes, b.initializers, {tensor: total(tensor) for tensor in wanted})
