"""Perturbation methods: maps built from extra passes through the model (see model/passes.py).

Each takes the explain graph's outputs of a batch plus `input` [N,3,H,W] and `target` [N] (the class
explained, top-1 resolved) and returns [N,h,w] maps: Score-CAM at the target layer's resolution,
occlusion, patch scores and SmoothGrad at model input resolution. A segmenter's rows also bring `target_mask`
[N,H,W] (each row's region), which every perturbed copy of the row is scored on (model/passes.py).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import cv2
import numpy as np
from onnxcam.runner.model.graph import probabilities
from onnxcam.runner.model.passes import ExtraPasses


def row_target(out: dict[str, np.ndarray], i: int) -> tuple:
    """What the extra passes score row i's perturbed inputs on: its class, and a segmenter's row its region."""
    if "target_mask" in out:
        return int(out["target"][i]), out["target_mask"][i]
    return (int(out["target"][i]),)


def _interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of 1-D bilinear resampling with align_corners=True."""
    matrix = np.zeros((size_out, size_in), np.float64)
    if size_in == 1 or size_out == 1:
        matrix[:, 0] = 1
        return matrix
    source = np.arange(size_out) * (size_in - 1) / (size_out - 1)
    low = np.minimum(np.floor(source).astype(int), size_in - 2)
    fraction = source - low
    matrix[np.arange(size_out), low] = 1 - fraction
    matrix[np.arange(size_out), low + 1] += fraction
    return matrix


def scorecam(out: dict[str, np.ndarray], passes: ExtraPasses, *, batch_size: int) -> np.ndarray:
    """Wang et al. 2020, as pytorch-grad-cam's ScoreCAM: every channel A_c, upsampled (bilinear, corners
    aligned) and min-max scaled, masks the (normalised) input; the softmax over channels of the target's
    logits on those masked inputs weights the channels; map = ReLU(sum_c w_c A_c)."""
    activations, inputs = out["activations"], out["input"]
    n, channels, h, w = activations.shape
    rows, cols = (_interpolation_matrix(size, full) for size, full in zip((h, w), inputs.shape[2:], strict=True))

    def masked() -> Iterator[tuple[np.ndarray, int]]:
        for i in range(n):
            for channel in activations[i]:
                mask = rows @ channel @ cols.T
                low = mask.min()
                mask = (mask - low) / (mask.max() - low + 1e-8)
                yield inputs[i] * mask.astype(np.float32), *row_target(out, i)

    logits = passes.scores(masked(), batch_size, kind="logit").reshape(n, channels).astype(np.float64)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.maximum(np.einsum("nc,nchw->nhw", weights, activations), 0)


def _window_starts(size: int, patch: int, stride: int) -> range:
    """Captum's Occlusion: windows from 0 in steps of `stride` until the edge is covered (the last may be cut)."""
    return range(0, -(-(size - patch) // stride) * stride + 1, stride)


def _whole_window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Windows from 0 in steps of `stride`, the last one moved back to end at the edge: every window whole (a
    cut instance, resized to the input, would be stretched)."""
    starts = list(range(0, size - patch + 1, stride))
    return starts + [size - patch] if starts[-1] + patch < size else starts


def occlusion(out: dict[str, np.ndarray], passes: ExtraPasses, *, patch: int, stride: int, fill: str,
              batch_size: int) -> np.ndarray:
    """Zeiler & Fergus 2014, as Captum's Occlusion: each pixel gets the mean drop in the target's probability
    over the windows (patch x patch, moved by stride) that cover it, the window filled as `fill` says."""
    inputs, targets = out["input"], out["target"]
    n, _, height, width = inputs.shape
    windows = [(y, x) for y in _window_starts(height, patch, stride) for x in _window_starts(width, patch, stride)]
    original = probabilities(out["logits"], passes.info.output_activation)[np.arange(n), targets]

    def occluded() -> Iterator[tuple[np.ndarray, int]]:
        for i in range(n):
            baseline = passes.fill(inputs[i], fill)
            for y, x in windows:
                image = inputs[i].copy()
                image[:, y:y + patch, x:x + patch] = baseline[:, y:y + patch, x:x + patch]
                yield image, *row_target(out, i)

    scores = passes.scores(occluded(), batch_size).reshape(n, len(windows))
    return _spread(original[:, None] - scores, windows, patch, (height, width))


def _spread(values: np.ndarray, windows: list[tuple[int, int]], patch: int, size: tuple[int, int]) -> np.ndarray:
    """[N, windows] values -> [N, H, W]: each pixel the mean value of the windows covering it."""
    total = np.zeros((len(values), *size), np.float64)
    count = np.zeros(size, np.float64)
    for k, (y, x) in enumerate(windows):
        total[:, y:y + patch, x:x + patch] += values[:, k, None, None]
        count[y:y + patch, x:x + patch] += 1
    return total / count


def patches(out: dict[str, np.ndarray], passes: ExtraPasses, *, patch: int, stride: int, view: str, fill: str,
            batch_size: int) -> np.ndarray:
    """Patch (instance) scores as in attention-MIL localisation (Patil et al. 2019): the input cut into whole
    patch x patch instances (moved by stride, the last one moved back to end at the edge), each classified
    alone; each pixel gets the mean target-class probability of the instances covering it. `view`: keep (the
    patch in place at its own scale, the rest filled as `fill` says) or crop (the patch cropped and resized to
    the model's input size, bilinear: for a model trained on such tiles, as MIL's instance classifiers are)."""
    inputs, targets = out["input"], out["target"]
    n, _, height, width = inputs.shape
    windows = [(y, x) for y in _whole_window_starts(height, patch, stride)
               for x in _whole_window_starts(width, patch, stride)]

    def instances() -> Iterator[tuple[np.ndarray, int]]:
        for i in range(n):
            baseline = passes.fill(inputs[i], fill) if view == "keep" else None
            for y, x in windows:
                piece = inputs[i][:, y:y + patch, x:x + patch]
                if view == "crop":
                    image = cv2.resize(piece.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_LINEAR)
                    yield image.transpose(2, 0, 1), int(targets[i])
                else:
                    image = baseline.copy()
                    image[:, y:y + patch, x:x + patch] = piece
                    yield image, int(targets[i])

    return _spread(passes.scores(instances(), batch_size).reshape(n, len(windows)), windows, patch, (height, width))


def noisy_inputs(x: np.ndarray, noise: float, samples: int) -> Iterator[np.ndarray]:
    """x + N(0, sigma^2), sigma = noise * (max(x) - min(x)) (Smilkov et al.). Seeded by the input's bytes, so
    the same image gives the same map in every run."""
    rng = np.random.default_rng(zlib.crc32(x.tobytes()))
    sigma = noise * float(x.max() - x.min())
    for _ in range(samples):
        yield x + rng.normal(0, sigma, x.shape).astype(np.float32)


def smoothgrad(out: dict[str, np.ndarray], passes: ExtraPasses, *, noise: float, samples: int,
               batch_size: int) -> np.ndarray:
    """Smilkov et al. 2017, as Captum's NoiseTunnel(Saliency): the mean over noisy copies of |dS/dx|, then the
    maximum over colour channels."""
    inputs = out["input"]

    def noisy() -> Iterator[tuple[np.ndarray, int]]:
        for i in range(len(inputs)):
            for sample in noisy_inputs(inputs[i], noise, samples):
                yield sample, *row_target(out, i)

    total = np.zeros(inputs.shape, np.float64)
    for k, gradient in enumerate(passes.input_gradients(noisy(), batch_size)):
        total[k // samples] += np.abs(gradient)
    return (total / samples).max(axis=1)
