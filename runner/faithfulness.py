"""Faithfulness metrics of one explanation: how the model's score moves when the image is edited by it.

Y = the target class's probability (softmax or sigmoid) on the image; E = the explanation at model input
size, scaled to [0, 1]. Every value is that row's share of the dataset figure, which is the mean over
rows (summary.csv): percentages for average_drop, increase_in_confidence, top_removal and
pointing_game, the area under the score curve for deletion and insertion. The README gives the formulas.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from onnxcam.runner.forwards import FILLS, Cost, Forwards
from onnxcam.runner.methods import Option, normalise

CURVES = ("deletion", "insertion")


@dataclass(frozen=True)
class Metric:
    options: dict[str, Option]
    passes: bool = True  # runs the model on edited images


METRICS: dict[str, Metric] = {
    "average_drop": Metric({}),
    "increase_in_confidence": Metric({}),
    "top_removal": Metric({"fraction": Option(0.25, 0.0, 1.0), "fill": Option("mean", choices=FILLS)}),
    "deletion": Metric({"steps": Option(20, 2, 1000), "baseline": Option("mean", choices=FILLS)}),
    "insertion": Metric({"steps": Option(20, 2, 1000), "baseline": Option("blur", choices=FILLS)}),
    "pointing_game": Metric({}, passes=False),
}
COLUMNS = (*METRICS, *(f"{name}_curve" for name in CURVES))


@dataclass
class Row:
    """One (image, target, method) to evaluate."""

    input: np.ndarray  # [3,H,W], normalised
    explanation: np.ndarray  # E, [H,W] in [0,1]
    target: int
    score: float  # Y


def explanation(map_: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """E: a method's map at model input size (height, width) in [0,1]; guided maps by max |.| over channels."""
    if map_.ndim == 3:
        map_ = np.abs(map_).max(axis=0)
    if map_.shape != size:
        map_ = cv2.resize(map_, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return normalise(map_[None])[0]


def _order(values: np.ndarray) -> np.ndarray:
    """Pixel indices from the most to the least important (ties in raster order)."""
    return np.argsort(-values.ravel(), kind="stable")


def _confidence_change(rows: list[Row], forwards: Forwards, batch_size: int) -> list[dict[str, float]]:
    stream = ((forwards.times_map(row.input, row.explanation), row.target) for row in rows)
    scores = forwards.scores(stream, batch_size)
    return [{"average_drop": 100 * max(0.0, row.score - o) / row.score,
             "increase_in_confidence": 100.0 * (o > row.score)} for row, o in zip(rows, scores, strict=True)]


def _top_removal(rows: list[Row], forwards: Forwards, batch_size: int, fraction: float, fill: str
                 ) -> list[dict[str, float]]:
    def removed() -> Iterator[tuple[np.ndarray, int]]:
        for row in rows:
            channels = row.input.shape[0]
            top = _order(row.explanation)[:round(fraction * row.explanation.size)]
            image = row.input.reshape(channels, -1).copy()
            image[:, top] = forwards.fill(row.input, fill).reshape(channels, -1)[:, top]
            yield image.reshape(row.input.shape), row.target

    scores = forwards.scores(removed(), batch_size)
    return [{"top_removal": 100 * (row.score - o) / row.score} for row, o in zip(rows, scores, strict=True)]


def area_under_curve(curve: np.ndarray) -> float:
    """Trapezoidal area with the x axis scaled to [0, 1] (Petsiuk et al.'s RISE code)."""
    return float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / (len(curve) - 1))


def _curve(rows: list[Row], forwards: Forwards, batch_size: int, steps: int, baseline: str, insert: bool
           ) -> list[dict[str, object]]:
    """Deletion: from the image, replace ceil(HW / steps) pixels per step by `baseline` in order of E, down to the
    baseline. Insertion: from the baseline, put the image's pixels back in that order. As RISE's CausalMetric;
    the end that is the image itself is Y and is not run again."""
    pixels = rows[0].explanation.size if rows else 1
    per_step = math.ceil(pixels / steps)
    count = math.ceil(pixels / per_step)  # = steps, unless steps does not divide the pixels evenly

    def edited() -> Iterator[tuple[np.ndarray, int]]:
        for row in rows:
            channels = row.input.shape[0]
            image = row.input.reshape(channels, -1)
            other = forwards.fill(row.input, baseline).reshape(channels, -1)
            start, end = (other, image) if insert else (image, other)
            current = start.copy()
            order = _order(row.explanation)
            if insert:
                yield current.reshape(row.input.shape), row.target
            for step in range(1, count + (not insert)):
                chosen = order[(step - 1) * per_step:step * per_step]
                current[:, chosen] = end[:, chosen]
                yield current.reshape(row.input.shape), row.target

    scores = forwards.scores(edited(), batch_size).reshape(len(rows), count)
    name = "insertion" if insert else "deletion"
    results = []
    for row, values in zip(rows, scores, strict=True):
        curve = np.append(values, row.score) if insert else np.insert(values, 0, row.score)
        results.append({name: area_under_curve(curve), f"{name}_curve": curve})
    return results


@dataclass
class Evaluation:
    """The manifest's `evaluate` section."""

    metrics: dict[str, dict[str, object]]  # name -> options, in the manifest's order
    boxes: Path | None = None
    batch_size: int = 64

    def evaluate(self, rows: list[Row], forwards: Forwards, costs: dict[str, Cost]) -> list[dict[str, object]]:
        """Every metric that runs the model, for every row; adds what each metric cost to `costs`."""
        results: list[dict[str, object]] = [{} for _ in rows]
        steps: list[tuple[tuple[str, ...], Callable[[], list[dict]]]] = []
        confidence = tuple(m for m in ("average_drop", "increase_in_confidence") if m in self.metrics)
        if confidence:
            steps.append((confidence, lambda: _confidence_change(rows, forwards, self.batch_size)))
        if "top_removal" in self.metrics:
            steps.append((("top_removal",), lambda: _top_removal(rows, forwards, self.batch_size,
                                                                **self.metrics["top_removal"])))
        for name in CURVES:
            if name in self.metrics:
                steps.append(((name,), lambda name=name: _curve(rows, forwards, self.batch_size,
                                                                 insert=name == "insertion", **self.metrics[name])))
        for names, compute in steps:
            start, passes = time.perf_counter(), forwards.passes
            for result, values in zip(results, compute(), strict=True):
                result.update({key: value for key, value in values.items() if key.split("_curve")[0] in names})
            for name in names:  # average_drop and increase_in_confidence share their pass
                cost = costs.setdefault(name, Cost())
                cost.rows += len(rows)
                cost.seconds += (time.perf_counter() - start) / len(names)
                cost.passes += (forwards.passes - passes) / len(names)
        return results
