"""Eager PyTorch references that the exported graph is checked against.

The guided-backprop reference swaps the ReLU-like functionals for autograd Functions with
the guided backward, `relu(grad) * (input in the linear range)`. It shares no code with
the trace-time decompositions, so agreement between the two is a real check.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from onnxcam.exporter.explain_fn import FeatureLayout, LayerTap, objective
from onnxcam.exporter.layers import LayerInfo, logits_of
from torch import nn


class _GuidedClamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, low, high):
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.clamp(min=low, max=high)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        inside = x > ctx.low
        if ctx.high is not None:
            inside = inside & (x < ctx.high)
        return F.relu(grad) * inside, None, None


@contextlib.contextmanager
def guided_functionals() -> Iterator[None]:
    """Route F.relu / F.relu6 / F.hardtanh / torch.relu (and in-place forms) through `_GuidedClamp`."""

    def relu(x, inplace=False):
        return _GuidedClamp.apply(x, 0.0, None)

    def hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):
        return _GuidedClamp.apply(x, min_val, max_val)

    def relu6(x, inplace=False):
        return _GuidedClamp.apply(x, 0.0, 6.0)

    patches = [(F, "relu", relu), (F, "relu_", relu), (F, "hardtanh", hardtanh), (F, "relu6", relu6),
               (torch, "relu", relu), (torch, "relu_", relu)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, fn in patches:
            setattr(owner, name, fn)
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def reference_outputs(
    model: nn.Module, layer: LayerInfo, input: torch.Tensor, target: torch.Tensor,
    guided: bool, dtype: torch.dtype = torch.float64, saliency: bool = False, target_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Eager outputs of the explain contract, computed in `dtype` (float64 by default), one sample at a time
    (`target_mask` [N, H, W]: a segmenter's, see explain_fn.mask_score).

    float64 keeps float32 tie-breaking at ReLU/max-pool kinks out of the parity figure. One sample at a time
    halves the peak: efficientnet_b7's float64 forward and backward at 600x600 hold about 8 GB per sample.
    """
    model = copy.deepcopy(model).to(dtype)
    tap, layout = LayerTap(model.get_submodule(layer.name), layer.calls), FeatureLayout(layer)
    try:
        samples = [_sample_outputs(model, tap, layout, input[i:i + 1].to(dtype), target[i:i + 1], guided, saliency,
                                   () if target_mask is None else (target_mask[i:i + 1].to(dtype),))
                   for i in range(len(input))]
    finally:
        tap.remove()
    return {name: torch.cat([sample[name] for sample in samples]) for name in samples[0]}


def _sample_outputs(model: nn.Module, tap: LayerTap, layout: FeatureLayout, input: torch.Tensor,
                    target: torch.Tensor, guided: bool, saliency: bool, target_mask: tuple[torch.Tensor, ...]
                    ) -> dict[str, torch.Tensor]:
    tap.reset()
    x = input.clone().requires_grad_(True)
    output = logits_of(model(x))
    activations = tap.output
    score, reported = objective(output, target, *target_mask)
    (gradients,) = torch.autograd.grad(score, activations, retain_graph=saliency)
    result = {"logits": reported.pop("logits"), "activations": layout(activations), "gradients": layout(gradients),
              **reported}
    if saliency:
        (result["plain_input_gradients"],) = torch.autograd.grad(score, x)
    if guided:
        tap.reset()
        with guided_functionals():
            x = input.clone().requires_grad_(True)
            score, _ = objective(logits_of(model(x)), target, *target_mask)
            (result["input_gradients"],) = torch.autograd.grad(score, x)
    return {name: value.detach() for name, value in result.items()}
