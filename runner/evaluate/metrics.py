"""Faithfulness metrics of one explanation: how the model's score moves when the image is edited by it.

Y = the target class's probability (softmax or sigmoid) on the image; E = the explanation at model input
size, scaled to [0, 1]. Every value is that row's share of the dataset figure, which is the mean over
rows (summary.csv): percentages for average_drop, increase_in_confidence, top_removal and
pointing_game, the area under the score curve for deletion and insertion, a share for energy_inside.
docs/methods.md gives the formulas.

A segmenter's row brings its target mask: every edited image is scored on that same region (the stream's third
element, model/passes.py), so logits[t] is the region's mean class score and Y and O are both the softmax of it at t,
read as a classifier's are.

A metric is one function plus one entry in METRICS. The function takes the rows to score, a `Scoring`
(the model's extra passes, the batch size, the object boxes) and its options, and returns one
{column: value} per row. Metrics that run the model (`runs_model`) are scored in the batch stage on E;
the others in the write stage, on the map rendered at the original size (its peak). Metrics that share a
function share one call (average drop and increase in confidence come from the same pass).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
from onnxcam.runner.config import METRIC_OPTIONS, Evaluation, Option
from onnxcam.runner.costs import Cost
from onnxcam.runner.evaluate.boxes import ObjectBox
from onnxcam.runner.methods.maps import normalise
from onnxcam.runner.model.passes import ExtraPasses
from onnxcam.runner.size import Size

POINTING_TOLERANCE = 15  # pixels, at the original image size

@dataclass
class MetricRow:
    """One (image, target, method) to score. Metrics that run the model read `input` and `explanation`;
    the others read `image` and `peak`."""

    target: int
    score: float  # Y
    input: np.ndarray | None = None  # [3,H,W], normalised
    explanation: np.ndarray | None = None  # E, [H,W] in [0,1]
    image: str = ""  # the image's key in index.csv
    peak: tuple[int, int] | None = None  # the map's peak (x, y) in original pixels
    map_: np.ndarray | None = None  # the method's map as computed (signed; guided: [3,H,W]), for energy_inside
    mask: np.ndarray | None = None  # a segmenter row's target mask, bool [H,W] in the model input's frame


@dataclass
class Scoring:
    """What a metric may use besides its rows."""

    passes: ExtraPasses | None = None
    batch_size: int = Evaluation.batch_size
    boxes: dict[str, list[ObjectBox]] = field(default_factory=dict)


def input_map(map_: np.ndarray, size: Size) -> np.ndarray:
    """A method's map at model input size (bilinear), unscaled; guided maps by max |.| over channels."""
    if map_.ndim == 3:
        map_ = np.abs(map_).max(axis=0)
    height, width = size
    if map_.shape != (height, width):
        map_ = cv2.resize(map_, (width, height), interpolation=cv2.INTER_LINEAR)
    return map_


def explanation(map_: np.ndarray, size: Size) -> np.ndarray:
    """E: a method's map at model input size in [0,1]."""
    return normalise(input_map(map_, size)[None])[0]


def _scored_on(row: MetricRow) -> tuple:
    """What an edited copy of the row is scored on: its class, and a segmenter's row its (original) target mask."""
    return (row.target,) if row.mask is None else (row.target, row.mask)


def _order(values: np.ndarray) -> np.ndarray:
    """Pixel indices from the most to the least important (ties in raster order)."""
    return np.argsort(-values.ravel(), kind="stable")


def confidence_change(rows: list[MetricRow], scoring: Scoring) -> list[dict[str, float]]:
    """Average drop and increase in confidence (Chattopadhyay et al. 2018): O on the image times E."""
    passes = scoring.passes
    stream = ((passes.times_map(row.input, row.explanation), *_scored_on(row)) for row in rows)
    scores = passes.scores(stream, scoring.batch_size)
    return [{"average_drop": 100 * max(0.0, row.score - o) / row.score,
             "increase_in_confidence": 100.0 * (o > row.score)} for row, o in zip(rows, scores, strict=True)]


def top_removal(rows: list[MetricRow], scoring: Scoring, fraction: float, fill: str) -> list[dict[str, float]]:
    """The relative drop in Y when the top `fraction` of E's pixels are set to `fill`."""
    passes = scoring.passes

    def removed() -> Iterator[tuple]:
        for row in rows:
            channels = row.input.shape[0]
            top = _order(row.explanation)[:round(fraction * row.explanation.size)]
            image = row.input.reshape(channels, -1).copy()
            image[:, top] = passes.fill(row.input, fill).reshape(channels, -1)[:, top]
            yield image.reshape(row.input.shape), *_scored_on(row)

    scores = passes.scores(removed(), scoring.batch_size)
    return [{"top_removal": 100 * (row.score - o) / row.score} for row, o in zip(rows, scores, strict=True)]


def area_under_curve(curve: np.ndarray) -> float:
    """Trapezoidal area with the x axis scaled to [0, 1] (Petsiuk et al.'s RISE code)."""
    return float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / (len(curve) - 1))


def _curve(rows: list[MetricRow], passes: ExtraPasses, batch_size: int, steps: int, baseline: str, insert: bool
           ) -> list[dict[str, object]]:
    """Deletion: from the image, replace ceil(HW / steps) pixels per step by `baseline` in order of E, down to the
    baseline. Insertion: from the baseline, put the image's pixels back in that order. As RISE's CausalMetric;
    the end that is the image itself is Y and is not run again."""
    pixels = rows[0].explanation.size if rows else 1
    per_step = math.ceil(pixels / steps)
    count = math.ceil(pixels / per_step)  # = steps, unless steps does not divide the pixels evenly

    def edited() -> Iterator[tuple]:
        for row in rows:
            channels = row.input.shape[0]
            image = row.input.reshape(channels, -1)
            other = passes.fill(row.input, baseline).reshape(channels, -1)
            start, end = (other, image) if insert else (image, other)
            current = start.copy()
            order = _order(row.explanation)
            if insert:
                yield current.reshape(row.input.shape), *_scored_on(row)
            for step in range(1, count + (not insert)):
                chosen = order[(step - 1) * per_step:step * per_step]
                current[:, chosen] = end[:, chosen]
                yield current.reshape(row.input.shape), *_scored_on(row)

    scores = passes.scores(edited(), batch_size).reshape(len(rows), count)
    name = "insertion" if insert else "deletion"
    results = []
    for row, values in zip(rows, scores, strict=True):
        curve = np.append(values, row.score) if insert else np.insert(values, 0, row.score)
        results.append({name: area_under_curve(curve), f"{name}_curve": curve})
    return results


def deletion(rows: list[MetricRow], scoring: Scoring, steps: int, baseline: str) -> list[dict[str, object]]:
    return _curve(rows, scoring.passes, scoring.batch_size, steps, baseline, insert=False)


def insertion(rows: list[MetricRow], scoring: Scoring, steps: int, baseline: str) -> list[dict[str, object]]:
    return _curve(rows, scoring.passes, scoring.batch_size, steps, baseline, insert=True)


def points_at(peak: tuple[int, int], boxes: list[ObjectBox], target: int) -> float | None:
    """100 when the peak lies within POINTING_TOLERANCE pixels of a box of the target class (a box without a
    class counts for every class), 0 when not, None when the image has no such box (the row is not counted)."""
    relevant = [box for box in boxes if box[4] is None or box[4] == target]
    if not relevant:
        return None
    x, y = peak
    t = POINTING_TOLERANCE
    hit = any(x0 - t <= x <= x1 + t and y0 - t <= y <= y1 + t for x0, y0, x1, y1, _ in relevant)
    return 100.0 if hit else 0.0


def pointing_game(rows: list[MetricRow], scoring: Scoring) -> list[dict[str, float | None]]:
    """Zhang et al. 2018: does the map's peak fall on an object box of the target class?"""
    return [{"pointing_game": points_at(row.peak, scoring.boxes.get(row.image, []), row.target)} for row in rows]


def share_inside(map_: np.ndarray, region: np.ndarray) -> float | None:
    """sum(max(map, 0) * region) / sum(max(map, 0)): the share of the map's positive mass inside `region` (bool, the
    map's shape). None (not counted) for an empty region; 0 for a map with no positive mass (it points nowhere)."""
    if not region.any():
        return None
    positive = np.maximum(map_, 0, dtype=np.float64)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else 0.0


def energy_inside(rows: list[MetricRow], scoring: Scoring) -> list[dict[str, float | None]]:
    """The map's positive mass inside the row's target mask (segmenters: a row without a mask is not counted)."""
    return [{"energy_inside": None if row.mask is None else share_inside(input_map(row.map_, row.mask.shape), row.mask)}
            for row in rows]


@dataclass(frozen=True)
class Metric:
    compute: Callable[..., list[dict[str, object]]]  # (rows, scoring, **options) -> {column: value} per row
    options: dict[str, Option] = field(default_factory=dict)
    curve: bool = False  # also fills `<name>_curve` (the score curve, space-separated)
    runs_model: bool = True  # scored in the batch stage (extra passes, E, the map, the mask); else in the write stage
    needs_boxes: bool = False  # needs evaluate.boxes (and is left out of the default metrics without it)
    needs_mask: bool = False  # reads the row's target mask: segmenters only (not a default, not a classifier column)
    higher_is_better: bool = True  # which way a more faithful explanation moves the figure

    def columns(self, name: str) -> tuple[str, ...]:
        return (name, f"{name}_curve") if self.curve else (name,)


METRICS: dict[str, Metric] = {
    "average_drop": Metric(confidence_change, higher_is_better=False),
    "increase_in_confidence": Metric(confidence_change),
    "top_removal": Metric(top_removal, METRIC_OPTIONS["top_removal"]),
    "deletion": Metric(deletion, METRIC_OPTIONS["deletion"], curve=True, higher_is_better=False),
    "insertion": Metric(insertion, METRIC_OPTIONS["insertion"], curve=True),
    "pointing_game": Metric(pointing_game, runs_model=False, needs_boxes=True),
    "energy_inside": Metric(energy_inside, needs_mask=True),  # runs no pass: in the batch stage for the mask
}
CURVES = tuple(name for name, metric in METRICS.items() if metric.curve)
COLUMNS = (*(name for name, metric in METRICS.items() if not metric.needs_mask),
           *(f"{name}_curve" for name in CURVES))  # index.csv's metric columns
REGION_COLUMNS = tuple(name for name, metric in METRICS.items() if metric.needs_mask)  # a segmenter's index adds these


def wanted(evaluation: Evaluation, runs_model: bool) -> list[str]:
    """The evaluation's metrics scored in the batch stage (`runs_model`) or in the write stage."""
    return [name for name in evaluation.metrics if METRICS[name].runs_model == runs_model]


def score(evaluation: Evaluation, rows: list[MetricRow], scoring: Scoring, runs_model: bool,
          costs: dict[str, Cost] | None = None) -> list[dict[str, object]]:
    """Every metric of the kind asked for, for every row; with `costs`, adds what each metric cost."""
    results: list[dict[str, object]] = [{} for _ in rows]
    calls: dict[Callable, list[str]] = {}
    for name in wanted(evaluation, runs_model):
        calls.setdefault(METRICS[name].compute, []).append(name)
    for compute, names in calls.items():
        start = time.perf_counter()
        passes_before = scoring.passes.count if scoring.passes else 0
        columns = {column for name in names for column in METRICS[name].columns(name)}
        for result, values in zip(results, compute(rows, scoring, **evaluation.metrics[names[0]]), strict=True):
            result.update({key: value for key, value in values.items() if key in columns})
        if costs is None:
            continue
        passes = (scoring.passes.count if scoring.passes else 0) - passes_before
        for name in names:  # metrics that share a call share its cost
            cost = costs.setdefault(name, Cost())
            cost.rows += len(rows)
            cost.seconds += (time.perf_counter() - start) / len(names)
            cost.model_passes += passes / len(names)
    return results
