"""The explain function: one forward, dS/dA, and (optionally) guided and plain dS/dinput.

`make_fx` traces it to an ATen graph that contains the backward ops, which is what
lets the gradients reach ONNX (docs/explain-graph.md, "How the gradients get into ONNX").
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from onnxcam.exporter.decompositions import UPSAMPLING_MODES, decomposition_table, guided_rule, upsample
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


def mask_score(output: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A segmenter's score: S = sum_n sum_yx output[n, t_n, y, x] * M[n, y, x], pytorch-grad-cam's
    SemanticSegmentationTarget, for `output` [N, K, H, W].

    M is `target_mask` where it is >= 0 (pixel weights, usually 0/1 from a ground-truth mask) and, where it is
    negative, the pixels the model predicts as t_n. `target_mask` broadcasts: [1, 1, 1] holding -1 (four bytes) asks
    for the prediction for the whole batch, [N, H, W] gives a mask per image. t_n < 0 picks the class predicted on
    the most pixels. Reported beside the score: `logits` [N, K], each class's raw score averaged over M (so the
    target's entry is S_n / |M_n|); `class_share` [N, K], the share of the pixels predicted as each class;
    `label_map` [N, H, W] uint8, the predicted class per pixel.
    """
    classes = torch.arange(output.shape[1], device=output.device)
    predicted = output.argmax(dim=1)
    class_share = (predicted[:, None] == classes[None, :, None, None]).to(output.dtype).mean(dim=(2, 3))
    chosen = torch.where(target < 0, class_share.argmax(dim=1), target)
    mask = torch.where(target_mask < 0, (predicted == chosen[:, None, None]).to(output.dtype), target_mask)
    picked = (classes == chosen[:, None]).to(output.dtype)
    score = (output * (picked[:, :, None, None] * mask[:, None])).sum()
    area = mask.sum(dim=(1, 2)).clamp_min(torch.finfo(output.dtype).tiny)
    logits = (output * mask[:, None]).sum(dim=(2, 3)) / area[:, None]
    return score, {"logits": logits, "class_share": class_share, "label_map": predicted.to(torch.uint8)}


def objective(output: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The score to back-propagate and what the graph reports beside it: a classifier's class score, or a
    segmenter's score over its target mask (`output` [N, K, H, W])."""
    if output.dim() == 4:
        return mask_score(output, target, target_mask)
    score, _ = class_score(output, target)
    return score, {"logits": output}


def make_explain_fn(model: nn.Module, tap: LayerTap, layout: FeatureLayout, guided: bool, saliency: bool = False,
                    half: bool = False, gradient_scale: float = 1.0):
    """Outputs in contract order: logits, activations, gradients[, input_gradients][, plain_input_gradients], and a
    segmenter's class_share and label_map (see `mask_score`; a segmenter's explain function takes `target_mask` too).

    `half`: `model` holds float16 weights; the float32 input is cast to float16 on the way in and every output back
    to float32. The class score is multiplied by `gradient_scale`, a power of two, before the backward and the
    gradients divided by it after their cast to float32, both exact: gradients too small for float16 (ResNet-50's
    layer4 gradients are about 1e-4, float16 has 11 bits of precision from 6.1e-5 down) are computed scaled up
    instead of flushed toward zero.
    """

    def unscaled(gradients: torch.Tensor) -> torch.Tensor:
        gradients = gradients.float()
        return gradients if gradient_scale == 1 else gradients * (1 / gradient_scale)

    def explain(input: torch.Tensor, target: torch.Tensor, *target_mask: torch.Tensor):
        tap.reset()
        x = input.detach().requires_grad_(True)
        output = logits_of(model(x.half() if half else x)).float()
        activations = tap.output
        score, reported = objective(output, target, *target_mask)
        if gradient_scale != 1:
            score = score * gradient_scale
        (gradients,) = torch.autograd.grad(score, activations, retain_graph=guided or saliency)
        outputs = [reported.pop("logits").detach(), layout(activations.detach()).float(), unscaled(layout(gradients))]
        if guided:
            with guided_rule():
                (input_gradients,) = torch.autograd.grad(score, x, retain_graph=saliency)
            outputs.append(unscaled(input_gradients))
        if saliency:
            (plain_input_gradients,) = torch.autograd.grad(score, x)
            outputs.append(unscaled(plain_input_gradients))
        return (*outputs, *(value.detach() for value in reported.values()))

    return explain


@contextlib.contextmanager
def traceable_functionals() -> Iterator[None]:
    """While tracing, F.linear and F.adaptive_avg_pool2d get their input contiguous (a copy costs little), and
    F.interpolate computes bilinear and nearest upsampling with matrix products:

    - ATen folds a [..., K] @ [K, M] product into one matrix product only for a contiguous input; otherwise
      (nn.MultiheadAttention's sequence-first views) it broadcasts a batched product, expanding the weight over
      the leading dimensions: a view in PyTorch, in ONNX an Expand that materialises it (ViT-B/16: 1.4 GB per
      attention layer and image);
    - ATen's global average pool re-strides the mean of a channels-last input (Swin's permuted head) with
      as_strided_, whose backward has no ONNX translation;
    - bilinear and nearest upsampling (segmenters' decoders, and the class scores scaled to the input's size) become
      two products with constant matrices (`upsample`): ATen's ops fix the symbolic batch, and their backward has no
      ONNX translation.
    """
    linear, pool, interpolate = F.linear, F.adaptive_avg_pool2d, F.interpolate

    def folded_linear(input, weight, bias=None):
        return linear(input.contiguous() if input.dim() > 2 else input, weight, bias)

    def contiguous_pool(input, output_size):
        return pool(input.contiguous(), output_size)

    def matmul_interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                           recompute_scale_factor=None, antialias=False):
        if mode not in UPSAMPLING_MODES or input.dim() != 4 or antialias:
            return interpolate(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
        scales = (scale_factor if isinstance(scale_factor, tuple | list) else (scale_factor,) * 2) if scale_factor \
            else (None, None)
        if size is None:
            size = tuple(math.floor(int(side) * scale) for side, scale in zip(input.shape[-2:], scales, strict=True))
        elif isinstance(size, int):
            size = (size, size)
        if recompute_scale_factor:
            scales = (None, None)
        return upsample(input, tuple(size), mode, bool(align_corners), scales)

    F.linear, F.adaptive_avg_pool2d, F.interpolate = folded_linear, contiguous_pool, matmul_interpolate
    try:
        yield
    finally:
        F.linear, F.adaptive_avg_pool2d, F.interpolate = linear, pool, interpolate


def _batch_dynamic(fake_mode: FakeTensorMode, tensor: torch.Tensor) -> torch.Tensor:
    """A fake copy of `tensor` whose first dimension is symbolic and the others static.

    `tracing_mode="symbolic"` would make every dimension symbolic; static C/H/W keep
    the shape reasoning cheap (DenseNet's many concatenations) and the graph specific.
    """
    sizes = [DimDynamic.DYNAMIC] + [DimDynamic.STATIC] * (tensor.dim() - 1)
    return fake_mode.from_tensor(tensor, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))


def trace_explain_graph(model: nn.Module, tap: LayerTap, layout: FeatureLayout, guided: bool,
                        example: tuple[torch.Tensor, ...], saliency: bool = False, half: bool = False,
                        gradient_scale: float = 1.0) -> torch.fx.GraphModule:
    """Trace on `example` (input, target[, target_mask]) with a symbolic batch so that its size is not baked into
    view/expand. Attention runs as its math (matmul, softmax): the fused kernels' backward ops have no decomposition
    to trace through."""
    fake_mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    fakes = [_batch_dynamic(fake_mode, tensor) for tensor in example]
    fn = make_explain_fn(model, tap, layout, guided, saliency, half, gradient_scale)
    with fake_mode, sdpa_kernel(SDPBackend.MATH), traceable_functionals():
        return make_fx(fn, decomposition_table=decomposition_table(), tracing_mode="real")(*fakes)
