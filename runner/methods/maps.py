"""Map helpers shared by methods, metrics and rendering: exact min-max normalisation and bilinear resizing."""

from __future__ import annotations

import cv2
import numpy as np
from onnxcam.runner.size import Size


def normalise(maps: np.ndarray) -> np.ndarray:
    """Per-map min-max scaling to exactly [0, 1] over all but the first axis; a constant map becomes 0.

    (pytorch-grad-cam divides by max + 1e-7 instead, which leaves maps of small magnitude short of 1.)
    """
    axes = tuple(range(1, maps.ndim))
    shifted = maps - maps.min(axis=axes, keepdims=True)
    span = shifted.max(axis=axes, keepdims=True)
    return shifted / np.where(span > 0, span, 1)


def resize_maps(maps: np.ndarray, size: Size) -> np.ndarray:
    """Bilinear resize of [N,h,w] maps to [N,*size]."""
    height, width = size
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])
