"""`onnxcam impressions`: what the network "has in memory" for a class, with no data (class impressions,
Addepalli et al. 2020; the input-optimisation view of Simonyan et al. 2014 and Yosinski et al. 2015).

Gradient ascent on the class's logit S, in pixel space [0, 1], from noise. Before each step the picture is
jittered (shift), rotated, scaled and its colours shifted at random, and the gradient is warped back, so that
only features that survive small transformations grow; a total-variation (TV) penalty is the natural-image
prior. Each step moves by `learning_rate` in mean absolute pixel value along

    dS/dp / mean|dS/dp| - tv * dTV/dp / mean|dTV/dp|

(TV = the sum of squared differences between neighbouring pixels): `tv` is the prior's share of the step,
whatever the scale of the model's logits. dS/dp comes from the graph's plain input gradients (`--saliency`),
through ONNX Runtime; no torch. The pictures are written as 8-bit PNGs at the model's input size, and scored
as written: that file is the model's input, no resize or crop.
"""

from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from onnxcam.runner.model.backend import Backend
from onnxcam.runner.model.graph import GraphInfo, probabilities


@dataclass(frozen=True)
class Settings:
    steps: int = 300
    learning_rate: float = 0.02  # mean |pixel change| per step, pixels in [0, 1]
    jitter: int = 8  # largest shift, pixels
    rotate: float = 5.0  # largest rotation, degrees
    scale: float = 0.05  # largest relative zoom
    colour: float = 0.05  # largest shift of each colour channel, in [0, 1]
    tv: float = 0.3  # the TV prior's share of each step (0: none)
    seed: int = 0


@dataclass
class Impression:
    target: int
    pixels: np.ndarray  # RGB uint8 [H, W, 3], as written
    top1: int  # the model's top-1 class on `pixels`
    probability: float  # the target's probability on `pixels`
    total_variation: float  # mean |difference| between neighbouring pixels, in 0..255 units


def total_variation(pixels: np.ndarray) -> float:
    """Mean absolute difference between horizontally and vertically neighbouring values."""
    values = pixels.astype(np.float64)
    return float((np.abs(np.diff(values, axis=0)).mean() + np.abs(np.diff(values, axis=1)).mean()) / 2)


def _tv_gradient(p: np.ndarray) -> np.ndarray:
    """d/dp of sum (p[y+1,x] - p[y,x])^2 + (p[y,x+1] - p[y,x])^2, for p [N, H, W, 3]."""
    grad = np.zeros_like(p)
    dy, dx = np.diff(p, axis=1), np.diff(p, axis=2)
    grad[:, 1:] += 2 * dy
    grad[:, :-1] -= 2 * dy
    grad[:, :, 1:] += 2 * dx
    grad[:, :, :-1] -= 2 * dx
    return grad


def _unit(values: np.ndarray) -> np.ndarray:
    """Each picture's array divided by its mean absolute value."""
    scale = np.abs(values).mean(axis=(1, 2, 3), keepdims=True)
    return values / np.where(scale > 0, scale, 1)


class Optimiser:
    def __init__(self, backend: Backend, info: GraphInfo, settings: Settings):
        self.backend, self.info, self.settings = backend, info, settings
        pre = info.preprocessing
        self.height, self.width = pre.size
        self.mean, self.std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
        self.rgb = pre.channel_order == "RGB"

    def to_input(self, p: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] RGB in [0, 1] -> the model's input [N, 3, H, W]."""
        x = p if self.rgb else p[..., ::-1]
        return np.ascontiguousarray(((x - self.mean) / self.std).transpose(0, 3, 1, 2), np.float32)

    def _transforms(self, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        s, centre = self.settings, (self.width / 2, self.height / 2)
        matrices = []
        for _ in range(n):
            angle, zoom = rng.uniform(-s.rotate, s.rotate), 1 + rng.uniform(-s.scale, s.scale)
            matrix = cv2.getRotationMatrix2D(centre, angle, zoom)
            matrix[:, 2] += rng.integers(-s.jitter, s.jitter + 1, 2)
            matrices.append(matrix)
        return matrices

    def _warp(self, image: np.ndarray, matrix: np.ndarray, inverse: bool = False) -> np.ndarray:
        flags = cv2.INTER_LINEAR | (cv2.WARP_INVERSE_MAP if inverse else 0)
        return cv2.warpAffine(image, matrix, (self.width, self.height), flags=flags, borderMode=cv2.BORDER_REFLECT)

    def run(self, targets: list[int]) -> np.ndarray:
        """Optimised pictures [N, H, W, 3] in [0, 1], one per target class."""
        s, n = self.settings, len(targets)
        rng = np.random.default_rng(s.seed)
        p = np.clip(0.5 + rng.normal(0, 0.1, (n, self.height, self.width, 3)), 0, 1).astype(np.float32)
        classes = np.asarray(targets, np.int64)
        for _ in range(s.steps):
            matrices = self._transforms(rng, n)
            moved = np.stack([self._warp(p[i], matrices[i]) for i in range(n)])
            moved = np.clip(moved + rng.uniform(-s.colour, s.colour, (n, 1, 1, 3)).astype(np.float32), 0, 1)
            gradient = self.backend.run(("plain_input_gradients",), self.to_input(moved), classes)
            dp = gradient["plain_input_gradients"].transpose(0, 2, 3, 1) / self.std
            dp = dp if self.rgb else dp[..., ::-1]
            back = np.stack([self._warp(dp[i], matrices[i], inverse=True) for i in range(n)])
            step = _unit(back)
            if s.tv:
                step -= s.tv * _unit(_tv_gradient(p))
            p = np.clip(p + s.learning_rate * _unit(step), 0, 1).astype(np.float32)
        return p

    def score(self, pixels: np.ndarray, targets: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 classes and the targets' probabilities for 8-bit pictures [N, H, W, 3]."""
        logits = self.backend.run(("logits",), self.to_input(pixels.astype(np.float32) / 255),
                                  np.asarray(targets, np.int64))["logits"]
        scores = probabilities(logits, self.info.output_activation)
        return scores.argmax(axis=1), scores[np.arange(len(targets)), targets]


def class_impressions(backend: Backend, info: GraphInfo, targets: list[int], settings: Settings,
                      batch: int = 8) -> tuple[list[Impression], float]:
    """The impressions of `targets`, `batch` classes optimised together; returns them and the seconds taken."""
    optimiser, started, found = Optimiser(backend, info, settings), time.perf_counter(), []
    for first in range(0, len(targets), batch):
        chosen = targets[first:first + batch]
        pixels = np.round(optimiser.run(chosen) * 255).astype(np.uint8)
        top1, probability = optimiser.score(pixels, chosen)
        found += [Impression(target, pixels[k], int(top1[k]), float(probability[k]), total_variation(pixels[k]))
                  for k, target in enumerate(chosen)]
    return found, time.perf_counter() - started


def file_name(target: int, label: str, digits: int) -> str:
    return f"{target:0{digits}d}-{re.sub(r'[^A-Za-z0-9-]+', '_', label).strip('_')[:60]}.png"


def write_impression(folder: Path, impression: Impression, labels: list[str]) -> Path:
    path = folder / file_name(impression.target, labels[impression.target], len(str(len(labels) - 1)))
    ok, data = cv2.imencode(".png", np.ascontiguousarray(impression.pixels[..., ::-1]))
    path.write_bytes(data.tobytes())
    return path


def parse_classes(text: str, labels: list[str]) -> list[int]:
    """Class numbers or exact label names, comma-separated (`1,282`, `goldfish,tiger cat`)."""
    classes = []
    for item in (part.strip() for part in text.split(",")):
        if item.isdigit() and int(item) < len(labels):
            classes.append(int(item))
        elif item in labels:
            classes.append(labels.index(item))
        else:
            close = difflib.get_close_matches(item, labels, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else f"give class numbers 0..{len(labels) - 1}"
            raise ValueError(f"--classes: no class '{item}'; {hint}")
    if not classes:
        raise ValueError("--classes: name at least one class (numbers, e.g. --classes 1,282)")
    return list(dict.fromkeys(classes))
