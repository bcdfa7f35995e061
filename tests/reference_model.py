"""The model as the reference libraries (pytorch-grad-cam, Captum) must see it to explain the same layer as
onnxcam: used by the parity tests and the benchmark."""

from __future__ import annotations

import copy

import numpy as np
import torch


class HeadCallOnly(torch.nn.Module):
    """efficientnet-lite0 calls one ReLU6 module twice (stem and head). pytorch-grad-cam hooks every call
    and uses the first (the 112x112 stem); onnxcam taps the last call, the head. This gives the head call its
    own module so that pytorch-grad-cam sees the same layer."""

    def __init__(self, activation: torch.nn.Module, head_channels: int):
        super().__init__()
        self.stem, self.head, self.head_channels = activation, type(activation)(), head_channels

    def forward(self, x):
        return self.head(x) if x.shape[1] == self.head_channels else self.stem(x)


class OutOnly(torch.nn.Module):
    """pytorch-grad-cam's segmentation tutorial's SegmentationModelOutputWrapper: it needs a tensor, torchvision's
    segmenters return a dict."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def reference_model(loaded, layer: str, channels: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A copy of the loaded model for the reference libraries, and the module of its target layer
    (`channels`: the target layer's output channels)."""
    model = copy.deepcopy(loaded.model)
    if loaded.spec == "efficientnet-lite0":
        model._swish = HeadCallOnly(model._swish, channels)
        return model, model._swish.head
    return model, model.get_submodule(layer)


def gradcam_plus_plus_with_epsilon(gradients: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM++ from an explain graph's tensors: alpha = G^2 / (2 G^2 + sum(A) G^3 + 1e-6), its
    epsilon included (onnxcam follows the paper's eq. 19 without it), ReLU'd, not normalised."""
    g, a = gradients.astype(np.float64), activations.astype(np.float64)
    alpha = np.where(g != 0, g**2 / (2 * g**2 + a.sum(axis=(2, 3))[:, :, None, None] * g**3 + 1e-6), 0)
    return np.maximum(np.einsum("nc,nchw->nhw", (np.maximum(g, 0) * alpha).sum(axis=(2, 3)), a), 0)
