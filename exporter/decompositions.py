"""Decompositions that make backward ops exportable to ONNX.

`make_fx` records the autograd engine's backward ops. Some of them have no ONNX
translation (`convolution_backward`, the pooling backwards) and the default
decomposition of max-pool backward is a ScatterElements(add), slow and fragile on
GPU providers. The functions here rewrite each one with forward-style ops only.
Weight and bias gradients are never needed: parameters are frozen before tracing.

The guided-backprop rule lives here too: while `guided_rule()` is active, the
ReLU-like backwards (`threshold_backward`, `hardtanh_backward`) pass only positive
gradients through positive inputs. The flag is read at trace time, so the rule is
baked into exactly the part of the graph traced under it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch._decomp import core_aten_decompositions

aten = torch.ops.aten

_guided = False


@contextlib.contextmanager
def guided_rule() -> Iterator[None]:
    """Trace the ReLU-like backwards with the guided-backprop rule inside this block."""
    global _guided
    previous, _guided = _guided, True
    try:
        yield
    finally:
        _guided = previous


def _pair(value) -> tuple[int, int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return (int(values[0]), int(values[-1]))


def _threshold_backward(grad, self, threshold):
    if _guided:
        return torch.where(self > threshold, F.relu(grad), torch.zeros_like(grad))
    return torch.where(self > threshold, grad, torch.zeros_like(grad))


def _hardtanh_backward(grad, self, min_val, max_val):
    inside = (self > min_val) & (self < max_val)
    passed = F.relu(grad) if _guided else grad
    return torch.where(inside, passed, torch.zeros_like(grad))


def _no_parameter_grads(output_mask) -> None:
    if len(output_mask) > 1 and any(output_mask[1:]):
        raise RuntimeError("weight/bias gradients requested; freeze the model before tracing")


def _convolution_backward(
    grad_output, input, weight, bias_sizes, stride, padding, dilation,
    transposed, output_padding, groups, output_mask,
):
    _no_parameter_grads(output_mask)
    if transposed or weight.dim() != 4:
        raise NotImplementedError("convolution_backward: only 2-D, non-transposed convolutions")
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    kernel = weight.shape[2:]
    out_pad = []
    for axis in range(2):
        size_in, size_out = input.shape[2 + axis], grad_output.shape[2 + axis]
        full = (size_out - 1) * stride[axis] - 2 * padding[axis] + dilation[axis] * (kernel[axis] - 1) + 1
        out_pad.append(int(size_in - full))
    grad_input = F.conv_transpose2d(
        grad_output, weight, stride=stride, padding=padding, output_padding=tuple(out_pad),
        groups=groups, dilation=dilation,
    )
    return grad_input, None, None


def _constant(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A static-shape constant, computed in NumPy so that tracing records one tensor, not its construction."""
    return torch.as_tensor(array).to(like.dtype)


def _window_spread(size_in: int, size_out: int) -> np.ndarray:
    """[size_in, size_out]: 1/|window| where input row y is in adaptive-pool window i."""
    matrix = np.zeros((size_in, size_out))
    for i in range(size_out):
        start, end = (i * size_in) // size_out, math.ceil((i + 1) * size_in / size_out)
        matrix[start:end, i] = 1.0 / (end - start)
    return matrix


def _adaptive_avg_pool2d_backward(grad_output, self):
    """grad_in = Mh @ grad @ Mw^T with Mh[y, i] = [y in window i] / |window i| (static sizes)."""
    height, width = int(self.shape[-2]), int(self.shape[-1])
    out_h, out_w = int(grad_output.shape[-2]), int(grad_output.shape[-1])
    if (out_h, out_w) == (height, width):
        return grad_output.clone()
    if (out_h, out_w) == (1, 1):
        return grad_output.expand(self.shape) / (height * width)
    rows = _constant(_window_spread(height, out_h), grad_output)
    cols = _constant(_window_spread(width, out_w).T, grad_output)
    return rows @ grad_output @ cols


def _interpolation_matrix(size_in: int, size_out: int, mode: str, align_corners: bool, scale: float | None
                          ) -> np.ndarray:
    """[size_out, size_in]: the weights PyTorch's upsampling gives each input row, its CPU kernels' source index with
    ratio = 1 / scale or in / out: bilinear (i + 0.5) ratio - 0.5 clamped at 0, or i (in - 1) / (out - 1) with
    align_corners; nearest floor(i ratio); nearest-exact floor((i + 0.5) ratio)."""
    ratio = 1.0 / scale if scale else size_in / size_out
    if mode == "bilinear" and align_corners:
        ratio = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        if mode == "bilinear":
            source = ratio * i if align_corners else max(ratio * (i + 0.5) - 0.5, 0.0)
            low = min(int(source), size_in - 1)
            high, weight = min(low + 1, size_in - 1), source - low
            matrix[i, low] += 1 - weight
            matrix[i, high] += weight
        else:
            offset = 0.5 if mode == "nearest-exact" else 0.0
            matrix[i, min(math.floor((i + offset) * ratio), size_in - 1)] = 1.0
    return matrix


UPSAMPLING_MODES = ("bilinear", "nearest", "nearest-exact")


def upsample(input: torch.Tensor, size: tuple[int, int], mode: str, align_corners: bool,
             scales: tuple[float | None, float | None] = (None, None)) -> torch.Tensor:
    """F.interpolate (one of UPSAMPLING_MODES) as out = Ry @ x @ Rx^T with constant matrices (static sizes); its
    backward is the transposed products. ATen's ops would do, but their Python binding fixes a symbolic batch to the
    example's size (a guard on every size of the input), and their backward ops have no ONNX translation."""
    (height, width), (out_h, out_w) = input.shape[-2:], size
    rows = _constant(_interpolation_matrix(int(height), int(out_h), mode, align_corners, scales[0]), input)
    cols = _constant(_interpolation_matrix(int(width), int(out_w), mode, align_corners, scales[1]).T, input)
    return rows @ input @ cols


def _scatter_windows(values, kernels, channels, kernel, stride, padding, dilation, size_in):
    """Sum per-window values back onto the input grid with a grouped transposed conv.

    values: [N, C*K, oh, ow], one plane per (channel, window offset); kernels: [C*K, 1, kh, kw].
    The transposed conv runs without padding; the padding border is cropped afterwards,
    which also covers ceil-mode windows that hang over the edge.
    """
    grad = F.conv_transpose2d(values, kernels, stride=stride, groups=channels, dilation=dilation)
    pad_h = max(0, padding[0] + size_in[0] - grad.shape[-2])
    pad_w = max(0, padding[1] + size_in[1] - grad.shape[-1])
    if pad_h or pad_w:
        grad = F.pad(grad, (0, pad_w, 0, pad_h))
    return grad[..., padding[0]:padding[0] + size_in[0], padding[1]:padding[1] + size_in[1]]


def _max_pool2d_with_indices_backward(
    grad_output, self, kernel_size, stride, padding, dilation, ceil_mode, indices,
):
    """Scatter-free: one-hot of each max's offset inside its window, then `_scatter_windows`."""
    kernel, padding, dilation = _pair(kernel_size), _pair(padding), _pair(dilation)
    stride = _pair(stride) if stride else kernel
    channels, height, width = int(self.shape[-3]), int(self.shape[-2]), int(self.shape[-1])
    out_h, out_w = int(grad_output.shape[-2]), int(grad_output.shape[-1])
    n_offsets = kernel[0] * kernel[1]
    row_start = torch.as_tensor((np.arange(out_h) * stride[0] - padding[0]).reshape(out_h, 1))
    col_start = torch.as_tensor((np.arange(out_w) * stride[1] - padding[1]).reshape(1, out_w))
    dy = torch.div(torch.div(indices, width, rounding_mode="floor") - row_start, dilation[0], rounding_mode="floor")
    dx = torch.div(torch.remainder(indices, width) - col_start, dilation[1], rounding_mode="floor")
    offset = dy * kernel[1] + dx
    one_hot = (offset.unsqueeze(2) == torch.as_tensor(np.arange(n_offsets).reshape(1, 1, n_offsets, 1, 1)))
    values = (one_hot.to(grad_output.dtype) * grad_output.unsqueeze(2)).flatten(1, 2)
    kernels = _constant(np.tile(np.eye(n_offsets).reshape(n_offsets, 1, *kernel), (channels, 1, 1, 1)), grad_output)
    return _scatter_windows(values, kernels, channels, kernel, stride, padding, dilation, (height, width))


def _avg_pool_divisor(out_hw, size_in, kernel, stride, padding, count_include_pad) -> np.ndarray:
    """How many input cells each output window averages over (PyTorch's rule)."""
    divisor = np.empty(out_hw)
    low = (-padding[0], -padding[1]) if count_include_pad else (0, 0)
    high = (size_in[0] + padding[0], size_in[1] + padding[1]) if count_include_pad else size_in
    for i in range(out_hw[0]):
        y0 = i * stride[0] - padding[0]
        rows = min(y0 + kernel[0], high[0]) - max(y0, low[0])
        for j in range(out_hw[1]):
            x0 = j * stride[1] - padding[1]
            divisor[i, j] = rows * (min(x0 + kernel[1], high[1]) - max(x0, low[1]))
    return divisor


def _avg_pool2d_backward(
    grad_output, self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
):
    kernel, padding = _pair(kernel_size), _pair(padding)
    stride = _pair(stride) if stride else kernel
    channels, height, width = int(self.shape[-3]), int(self.shape[-2]), int(self.shape[-1])
    out_hw = (int(grad_output.shape[-2]), int(grad_output.shape[-1]))
    if divisor_override:
        divisor = np.full(out_hw, float(divisor_override))
    else:
        divisor = _avg_pool_divisor(out_hw, (height, width), kernel, stride, padding, count_include_pad)
    kernels = _constant(np.ones((channels, 1, *kernel)), grad_output)
    return _scatter_windows(grad_output / _constant(divisor, grad_output), kernels, channels, kernel, stride,
                            padding, (1, 1), (height, width))


def _constant_pad_nd(self, pad, value=0):
    """Pad by concatenating constant blocks (negative pads crop). The default decomposition
    guards on the batch size, which would bake the example batch into the graph
    (EfficientNet-Lite's static "same" padding)."""
    for axis, (before, after) in enumerate(zip(pad[::2], pad[1::2], strict=True)):
        dim = self.dim() - 1 - axis
        start, stop = max(0, -before), self.shape[dim] - max(0, -after)
        self = self.narrow(dim, start, stop - start)
        parts = []
        for size in (max(0, before), max(0, after)):
            shape = list(self.shape)
            shape[dim] = size
            parts.append(self.new_full(shape, value) if size else None)
        self = torch.cat([p for p in (parts[0], self, parts[1]) if p is not None], dim=dim)
    return self


def _copy(self, src, non_blocking=False):
    """`self` filled with `src` broadcast to its shape. ONNX's translation of aten.copy keeps src's shape, so a
    scalar written into a slice (Swin's shifted-window mask: `mask[h0:h1, w0:w1] = count`) came out 0-d."""
    return src.to(self.dtype).expand(self.shape).clone()


def decomposition_table() -> dict:
    """The core ATen decompositions plus the exportable backwards above."""
    table = dict(core_aten_decompositions())
    table.update({
        aten.threshold_backward.default: _threshold_backward,
        aten.hardtanh_backward.default: _hardtanh_backward,
        aten.convolution_backward.default: _convolution_backward,
        aten._adaptive_avg_pool2d_backward.default: _adaptive_avg_pool2d_backward,
        aten.max_pool2d_with_indices_backward.default: _max_pool2d_with_indices_backward,
        aten.avg_pool2d_backward.default: _avg_pool2d_backward,
        aten.constant_pad_nd.default: _constant_pad_nd,
        aten.copy.default: _copy,
    })
    return table
