"""Explanation methods: each is a formula over the explain graph's outputs, vectorised over the batch.

A = `activations` [N,C,h,w], G = `gradients` dS/dA [N,C,h,w], B = `input_gradients` [N,3,H,W] (guided),
P = `plain_input_gradients` [N,3,H,W]. CAM-family methods return [N,h,w] maps at the target layer's
resolution (ReLU applied where the method defines it); guided methods return [N,3,H,W] and saliency
[N,H,W], both at model input resolution. Formulas follow the papers and pytorch-grad-cam/Captum, the
references the tests compare against. Perturbation methods (occlusion, Score-CAM, SmoothGrad) are in
perturbation.py; they also get `input`, `target` and the model's extra passes.
"""

from __future__ import annotations

import numpy as np
from onnxcam.runner.methods.maps import normalise, resize_maps

EPS = 1e-7


def _weighted(weights: np.ndarray, activations: np.ndarray) -> np.ndarray:
    return np.einsum("nc,nchw->nhw", weights, activations)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def cam(out: dict[str, np.ndarray], **_) -> np.ndarray:
    """Zhou et al. 2016: sum_c w_c A_c with the linear head's weights for the target class (no ReLU).

    With a GAP->linear head dS/dA_c = w_c / (h w) at every position, so the weights are read off G.
    """
    gradients = out["gradients"]
    h, w = gradients.shape[2:]
    return _weighted(gradients[:, :, 0, 0] * (h * w), out["activations"])


def gradcam(out: dict[str, np.ndarray], *, guided_weights: bool) -> np.ndarray:
    """Selvaraju et al.: ReLU(sum_c mean(G_c) A_c). guided_weights: average only G > 0 where A > 0."""
    gradients, activations = out["gradients"], out["activations"]
    if guided_weights:
        gradients = gradients * ((gradients > 0) & (activations > 0))
    return _relu(_weighted(gradients.mean(axis=(2, 3)), activations))


def gradcam_plus_plus(out: dict[str, np.ndarray], **_) -> np.ndarray:
    """Chattopadhyay et al. eq. 19 (exponential score): alpha = G^2 / (2 G^2 + sum(A) G^3) = 1 / (2 + sum(A) G).

    Written in the reduced form, so no epsilon is needed where G > 0 (pytorch-grad-cam adds 1e-6 to the
    unreduced denominator, which shrinks the weights of channels with small gradients; see the parity tests).
    """
    gradients, activations = out["gradients"], out["activations"]
    denominator = 2 + activations.sum(axis=(2, 3))[:, :, None, None] * gradients
    alpha = np.divide(1, denominator, out=np.zeros_like(denominator), where=(gradients > 0) & (denominator != 0))
    return _relu(_weighted((gradients * alpha).sum(axis=(2, 3)), activations))


def xgradcam(out: dict[str, np.ndarray], **_) -> np.ndarray:
    """Fu et al. 2020: w_c = sum(G_c A_c) / sum(A_c)."""
    gradients, activations = out["gradients"], out["activations"]
    weights = (gradients * activations).sum(axis=(2, 3)) / (activations.sum(axis=(2, 3)) + EPS)
    return _relu(_weighted(weights, activations))


def hirescam(out: dict[str, np.ndarray], **_) -> np.ndarray:
    """Draelos & Carin 2020: ReLU(sum_c G_c * A_c), element-wise, no spatial averaging."""
    return _relu((out["gradients"] * out["activations"]).sum(axis=1))


def layercam(out: dict[str, np.ndarray], **_) -> np.ndarray:
    """Jiang et al. 2021: ReLU(sum_c ReLU(G_c) * A_c)."""
    return _relu((_relu(out["gradients"]) * out["activations"]).sum(axis=1))


def eigencam(out: dict[str, np.ndarray], **_) -> np.ndarray:
    """Muhammad & Yeasin 2020: projection of A on its first principal component (class-agnostic).

    As pytorch-grad-cam: spatial positions are rows, centred per channel, and projected on V^T[0] (its SVD with
    full_matrices=True also builds an (h·w)² U: 44 s for a 112x112 map, where this takes milliseconds).
    """
    activations = np.nan_to_num(out["activations"])
    n, c, h, w = activations.shape
    rows = activations.reshape(n, c, h * w).transpose(0, 2, 1)
    rows = rows - rows.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(rows, full_matrices=False)  # vt alone is used: U of all h·w positions is not needed
    return _relu(np.einsum("npc,nc->np", rows, vt[:, 0, :]).reshape(n, h, w))


def guided_backprop(out: dict[str, np.ndarray], **_) -> np.ndarray:
    """Springenberg et al.: the guided input gradients, [N,3,H,W]."""
    return out["input_gradients"]


def guided_gradcam(out: dict[str, np.ndarray], **_) -> np.ndarray:
    """Selvaraju et al.: guided backprop x Grad-CAM (normalised, upsampled to input size)."""
    guided = out["input_gradients"]
    maps = resize_maps(normalise(gradcam(out, guided_weights=False)), guided.shape[2:])
    return guided * maps[:, None]


def saliency(out: dict[str, np.ndarray], **_) -> np.ndarray:
    """Simonyan et al. 2014: max over colour channels of |dS/dx| (plain autograd, as Captum's Saliency)."""
    return np.abs(out["plain_input_gradients"]).max(axis=1)
