"""Activation visualisation (Yosinski et al. 2015): a channel of the target layer's activations A [N,C,h,w] shown
over the image, e.g. a conv5 channel that responds to faces in a network with no face class.

Unlike the other methods it makes several maps per image and class: one per channel asked for, or one per rank
of the `top` K channels (by mean activation, or by Grad-CAM weight mean(dS/dA_c) for the class explained).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxcam.runner.model.graph import GraphInfo


def views(*, channels: list[int] | tuple[int, ...], top: int, **_) -> list[str]:
    """The suffix of each map in index.csv's method column: `activations.c151`, or `activations.top1`..."""
    return [f"c{channel}" for channel in channels] if channels else [f"top{rank}" for rank in range(1, top + 1)]


def activations(out: dict[str, np.ndarray], *, channels: list[int] | tuple[int, ...], top: int,
                rank_by: str) -> tuple[np.ndarray, np.ndarray]:
    """Maps [N, V, h, w] (the activations as they are, no ReLU or scaling) and the channel of each [N, V]."""
    a = out["activations"]
    n = len(a)
    if channels:
        chosen = np.tile(np.asarray(channels, np.int64), (n, 1))
    else:
        score = a.mean(axis=(2, 3)) if rank_by == "mean" else out["gradients"].mean(axis=(2, 3))
        chosen = np.argsort(-score, axis=1, kind="stable")[:, :top]
    return a[np.arange(n)[:, None], chosen], chosen


def check(options: dict) -> str:
    """Exactly one of `channels` and `top`."""
    if bool(options["channels"]) == bool(options["top"]):
        return "give either channels: [151, ...] or top: K"
    if len(set(options["channels"])) != len(options["channels"]):
        return f"channels {list(options['channels'])} lists a channel twice"
    return ""


def check_model(options: dict, info: GraphInfo, path: Path) -> str:
    """The channels asked for exist in the target layer."""
    channels = info.activation_shape[0]
    if max(options["channels"], default=0) >= channels or options["top"] > channels:
        return (f"the target layer {info.target_layer} has {channels} channels (0..{channels - 1}); pick channels "
                f"below {channels} or a top of at most {channels}")
    return ""
