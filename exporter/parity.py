"""Parity between the exported graph (ONNX Runtime) and eager PyTorch.

The relative error is norm-wise, ||actual - expected|| / ||expected||. An element-wise
maximum is reported beside it but does not decide: guided input gradients jump at
ReLU/max-pool ties, and float32 ONNX Runtime and float64 PyTorch can break a near-tie
differently, moving one receptive-field patch while the rest agrees to ~1e-7.
"""

from __future__ import annotations

import numpy as np

# Input gradients may be this many times looser than the other outputs provided their cosine shows the rest agrees:
# a float32 and a float64 run settle a few ReLU and max-pool near-ties differently (exporter/export.py's gate)
INPUT_GRADIENT_FACTOR, INPUT_GRADIENT_COSINE = 10, 0.9999


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """||actual - expected||_2 / ||expected||_2 (the absolute error where expected is all zero)."""
    difference = np.linalg.norm((actual - expected).ravel().astype(np.float64))
    scale = np.linalg.norm(expected.ravel().astype(np.float64))
    return float(difference / scale) if scale > 0 else float(difference)


def max_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|."""
    scale = float(np.abs(expected).max())
    return float(np.abs(actual - expected).max() / scale) if scale > 0 else float(np.abs(actual).max())


def cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    a, b = actual.ravel().astype(np.float64), expected.ravel().astype(np.float64)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator > 0 else 1.0


def compare(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per output: relative (norm-wise) error, element-wise max error and cosine similarity. A segmenter's label_map
    is left out: a pixel on a near-tie between two classes may go either way in float32 (or float16), and its figure
    would say nothing; class_share, the share of the pixels predicted as each class, holds it to the tolerance."""
    return {name: {"relative_error": relative_error(actual[name], expected[name]),
                   "max_error": max_error(actual[name], expected[name]),
                   "cosine": cosine(actual[name], expected[name])} for name in expected if name != "label_map"}


def format_parity(figures: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{name} {f['relative_error']:.1e} (max {f['max_error']:.1e}, cos {f['cosine']:.6f})"
                     for name, f in figures.items())
