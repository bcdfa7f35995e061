"""The explain function: one forward, dS/dA, and (optionally) guided and plain dS/dinput.

`make_fx` traces it to an ATen graph that contains the backward ops, which is what
lets the gradients reach ONNX (docs/explain-graph.md, "How the gradients get into ONNX").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from onnxcam.exporter.decompositions import decomposition_table, guided_rule
from onnxcam.exporter.layers import LayerInfo, logits_of
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.nn.attention import SDPBackend, sdpa_kernel


class LayerTap:
    """Captures the output of one call of a module and hands a clone downstream.

    The clone keeps later in-place ops (ReLU(inplace=True) after the layer, DenseNet's
    functional in-place ReLU) from rewriting the captured activations. It is contiguous:
    ATen's global average pool re-strides the mean of a channels-last map (ConvNeXt's
    permuted blocks), and the backward of the view after it would need as_strided_scatter,
    which has no ONNX translation.
    """

    def __init__(self, module: nn.Module, call: int):
        self.call, self.seen, self.output = call, 0, None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.seen += 1
        if self.seen == self.call:
            self.output = output
            return output.clone(memory_format=torch.contiguous_format)
        return None

    def reset(self) -> None:
        self.seen, self.output = 0, None

    def remove(self) -> None:
        self.handle.remove()


class FeatureLayout:
    """The target layer's output as a map [N, C, h, w]: as it is (nchw), permuted (nhwc), or tokens with the prefix
    (class, register) tokens dropped and the rest laid out on the patch grid, as pytorch-grad-cam's
    `reshape_transform` does. Applied to the activations and to their gradients alike."""

    def __init__(self, layer: LayerInfo):
        self.layout, self.grid, self.prefix = layer.layout, layer.grid, layer.prefix_tokens

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.layout == "nhwc":
            return output.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            return output[:, self.prefix:, :].unflatten(1, self.grid).permute(0, 3, 1, 2)
        return output


def class_score(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S = sum_n logits[n, t_n] with t_n = target[n], or the top-1 class where target < 0.

    A mask rather than one_hot/gather: one_hot has a data-dependent check under make_fx and
    gather's backward becomes ScatterElements.
    """
    chosen = torch.where(target < 0, logits.argmax(dim=1), target)
    mask = torch.arange(logits.shape[1], device=logits.device) == chosen[:, None]
    return (logits * mask).sum(), chosen


def make_explain_fn(model: nn.Module, tap: LayerTap, layout: FeatureLayout, guided: bool, saliency: bool = False,
                    half: bool = False, gradient_scale: float = 1.0):
    """Outputs in contract order: logits, activations, gradients[, input_gradients][, plain_input_gradients].

    `half`: `model` holds float16 weights; the float32 input is cast to float16 on the way in and every output back
    to float32. The class score is multiplied by `gradient_scale`, a power of two, before the backward and the
    gradients divided by it after their cast to float32, both exact: gradients too small for float16 (ResNet-50's
    layer4 gradients are about 1e-4, float16 has 11 bits of precision from 6.1e-5 down) are computed scaled up
    instead of flushed toward zero.
    """

    def unscaled(gradients: torch.Tensor) -> torch.Tensor:
        gradients = gradients.float()
        return gradients if gradient_scale == 1 else gradients * (1 / gradient_scale)

    def explain(input: torch.Tensor, target: torch.Tensor):
        tap.reset()
        x = input.detach().requires_grad_(True)
        logits = logits_of(model(x.half() if half else x)).float()
        activations = tap.output
        score, _ = class_score(logits, target)
        if gradient_scale != 1:
            score = score * gradient_scale
        (gradients,) = torch.autograd.grad(score, activations, retain_graph=guided or saliency)
        outputs = [logits.detach(), layout(activations.detach()).float(), unscaled(layout(gradients))]
        if guided:
            with guided_rule():
                (input_gradients,) = torch.autograd.grad(score, x, retain_graph=saliency)
            outputs.append(unscaled(input_gradients))
        if saliency:
            (plain_input_gradients,) = torch.autograd.grad(score, x)
            outputs.append(unscaled(plain_input_gradients))
        return tuple(outputs)

    return explain


@contextlib.contextmanager
def contiguous_inputs() -> Iterator[None]:
    """While tracing, F.linear and F.adaptive_avg_pool2d get their input contiguous; a copy costs little, and:

    - ATen folds a [..., K] @ [K, M] product into one matrix product only for a contiguous input; otherwise
      (nn.MultiheadAttention's sequence-first views) it broadcasts a batched product, expanding the weight over
      the leading dimensions: a view in PyTorch, in ONNX an Expand that materialises it (ViT-B/16: 1.4 GB per
      attention layer and image);
    - ATen's global average pool re-strides the mean of a channels-last input (Swin's permuted head) with
      as_strided_, whose backward has no ONNX translation.
    """
    linear, pool = F.linear, F.adaptive_avg_pool2d

    def folded_linear(input, weight, bias=None):
        return linear(input.contiguous() if input.dim() > 2 else input, weight, bias)

    def contiguous_pool(input, output_size):
        return pool(input.contiguous(), output_size)

    F.linear, F.adaptive_avg_pool2d = folded_linear, contiguous_pool
    try:
        yield
    finally:
        F.linear, F.adaptive_avg_pool2d = linear, pool


def _batch_dynamic(fake_mode: FakeTensorMode, tensor: torch.Tensor) -> torch.Tensor:
    """A fake copy of `tensor` whose first dimension is symbolic and the others static.

    `tracing_mode="symbolic"` would make every dimension symbolic; static C/H/W keep
    the shape reasoning cheap (DenseNet's many concatenations) and the graph specific.
    """
    sizes = [DimDynamic.DYNAMIC] + [DimDynamic.STATIC] * (tensor.dim() - 1)
    return fake_mode.from_tensor(tensor, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))


def trace_explain_graph(model: nn.Module, tap: LayerTap, layout: FeatureLayout, guided: bool, example: torch.Tensor,
                        saliency: bool = False, half: bool = False, gradient_scale: float = 1.0
                        ) -> torch.fx.GraphModule:
    """Trace with a symbolic batch so that its size is not baked into view/expand. Attention runs as its math
    (matmul, softmax): the fused kernels' backward ops have no decomposition to trace through."""
    fake_mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    target = torch.full((example.shape[0],), -1, dtype=torch.int64)
    fake_input, fake_target = _batch_dynamic(fake_mode, example), _batch_dynamic(fake_mode, target)
    fn = make_explain_fn(model, tap, layout, guided, saliency, half, gradient_scale)
    with fake_mode, sdpa_kernel(SDPBackend.MATH), contiguous_inputs():
        return make_fx(fn, decomposition_table=decomposition_table(), tracing_mode="real")(fake_input, fake_target)
