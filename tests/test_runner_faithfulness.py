"""Faithfulness metrics on a model whose scores are known in closed form, against straight ports of the papers' code."""

import re

import numpy as np
import pytest
from onnxcam.runner.costs import Cost
from onnxcam.runner.evaluate import metrics
from onnxcam.runner.evaluate.boxes import read_boxes
from onnxcam.runner.evaluate.metrics import (
    Evaluation,
    MetricRow,
    Scoring,
    area_under_curve,
    explanation,
    pointing_game,
    points_at,
)
from onnxcam.runner.model.graph import GraphInfo, Preprocessing
from onnxcam.runner.model.passes import ExtraPasses

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class LinearBackend:
    """A model backend in NumPy: two classes, logit 1 = sum(w * x), logit 0 = 0, so P(class 1) = sigmoid(w . x)."""

    provider, notes = "numpy", []

    def __init__(self, weights: np.ndarray):
        self.weights, self.seen = weights, []

    def run(self, outputs, inputs, targets):
        assert outputs == ("logits",)
        self.seen.extend(inputs.copy())
        logit = (inputs * self.weights).sum(axis=(1, 2, 3))
        return {"logits": np.stack([np.zeros_like(logit), logit], axis=1)}


class LinearModel(ExtraPasses):
    """The extra passes of the metrics, through LinearBackend."""

    def __init__(self, weights: np.ndarray):
        info = GraphInfo(Preprocessing(size=weights.shape[1:], mean=MEAN, std=STD), labels=["no", "yes"],
                         target_layer="", activation_shape=(1, 1, 1), output_activation="softmax", outputs=[],
                         gap_linear_head=False, model="linear")
        self.linear = LinearBackend(weights)
        super().__init__(self.linear, info)

    @property
    def seen(self) -> list[np.ndarray]:
        return self.linear.seen

    def probability(self, x: np.ndarray) -> float:
        return float(1 / (1 + np.exp(-(x * self.linear.weights).sum())))


def score(evaluation: Evaluation, rows: list[MetricRow], model: LinearModel, costs=None) -> list[dict]:
    return metrics.score(evaluation, rows, Scoring(model, evaluation.batch_size), runs_model=True, costs=costs)


@pytest.fixture
def setting():
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.05, (3, 12, 10)).astype(np.float32)
    x = rng.normal(0, 1, (3, 12, 10)).astype(np.float32)
    model = LinearModel(weights)
    contribution = (weights * x).sum(axis=0)
    return model, x, contribution


def _row(model, x, e):
    return MetricRow(1, model.probability(x), x, e.astype(np.float32))


def _rise(model, x, e, steps, substrate, insert):
    """RISE's CausalMetric.single_run (Petsiuk et al. 2018), ported line by line to NumPy."""
    hw = e.size
    step = (hw + steps - 1) // steps
    n_steps = (hw + step - 1) // step
    start, finish = (substrate.copy(), x.copy()) if insert else (x.copy(), substrate.copy())
    salient_order = np.flip(np.argsort(e.reshape(-1, hw), axis=1), axis=-1)
    scores = np.empty(n_steps + 1)
    for i in range(n_steps + 1):
        scores[i] = model.probability(start)
        if i < n_steps:
            coords = salient_order[:, step * i:step * (i + 1)]
            start.reshape(3, hw)[:, coords[0]] = finish.reshape(3, hw)[:, coords[0]]
    return (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1), scores


@pytest.mark.parametrize(("metric", "baseline", "steps"), [("deletion", "mean", 20), ("insertion", "blur", 20),
                                                             ("deletion", "zero", 7), ("insertion", "mean", 120)])
def test_deletion_and_insertion_match_rise(setting, metric, baseline, steps):
    model, x, contribution = setting
    e = explanation(contribution, contribution.shape)
    evaluation = Evaluation({metric: {"steps": steps, "baseline": baseline}})
    costs = {}
    (result,) = score(evaluation, [_row(model, x, e)], model, costs)
    auc, curve = _rise(model, x, e, steps, model.fill(x, baseline), insert=metric == "insertion")
    np.testing.assert_allclose(result[f"{metric}_curve"], curve, rtol=1e-5)
    assert result[metric] == pytest.approx(auc, rel=1e-5)
    assert costs[metric].model_passes == len(curve) - 1, "the image's own score is reused, not run again"


def test_a_faithful_map_deletes_faster_and_inserts_faster_than_its_reverse(setting):
    model, x, contribution = setting
    evaluation = Evaluation({"deletion": {"steps": 20, "baseline": "mean"},
                             "insertion": {"steps": 20, "baseline": "mean"}})
    good, bad = (explanation(m, m.shape) for m in (contribution, -contribution))
    faithful, reverse = score(evaluation, [_row(model, x, good), _row(model, x, bad)], model, {})
    assert faithful["deletion"] < reverse["deletion"] - 0.05
    assert faithful["insertion"] > reverse["insertion"] + 0.05


def test_average_drop_and_increase_multiply_the_image_before_normalisation(setting):
    model, x, contribution = setting
    e = explanation(contribution, contribution.shape)
    row = _row(model, x, e)
    (result,) = score(Evaluation({"average_drop": {}, "increase_in_confidence": {}}), [row], model, {})
    mean, std = np.array(MEAN)[:, None, None], np.array(STD)[:, None, None]
    multiplied = ((x * std + mean) * e - mean) / std
    np.testing.assert_allclose(model.seen[0], multiplied, atol=1e-5)
    o = model.probability(multiplied)
    assert result["average_drop"] == pytest.approx(100 * max(0, row.score - o) / row.score, rel=1e-5)
    assert result["increase_in_confidence"] == (100.0 if o > row.score else 0.0)


@pytest.mark.parametrize("fill", ["mean", "zero", "blur"])
def test_top_removal_fills_exactly_the_top_fraction(setting, fill):
    model, x, contribution = setting
    e = explanation(contribution, contribution.shape)
    row = _row(model, x, e)
    (result,) = score(Evaluation({"top_removal": {"fraction": 0.25, "fill": fill}}), [row], model, {})
    edited = model.seen[0]
    changed = np.abs(edited - x).max(axis=0) > 0
    top = e >= np.sort(e.ravel())[-30]  # 25% of 120 pixels
    assert changed.sum() == 30 and np.array_equal(changed | top, top)
    np.testing.assert_allclose(edited[:, top], model.fill(x, fill)[:, top], atol=1e-6)
    o = model.probability(edited)
    assert result["top_removal"] == pytest.approx(100 * (row.score - o) / row.score, rel=1e-5)


def test_fills():
    model = LinearModel(np.zeros((3, 32, 32), np.float32))
    x = np.random.default_rng(1).normal(0, 1, (3, 32, 32)).astype(np.float32)
    assert not model.fill(x, "mean").any()
    black = model.fill(x, "zero") * np.array(STD)[:, None, None] + np.array(MEAN)[:, None, None]
    np.testing.assert_allclose(black, 0, atol=1e-6)
    blurred = model.fill(x, "blur")
    assert blurred.std() < 0.3 * x.std() and abs(blurred.mean() - x.mean()) < 0.1


def test_explanation_of_guided_and_cam_maps():
    cam = np.arange(12, dtype=np.float32).reshape(3, 4)
    e = explanation(cam, (6, 8))
    assert e.shape == (6, 8) and e.min() == 0 and e.max() == pytest.approx(1)
    guided = np.zeros((3, 6, 8), np.float32)
    guided[1, 2, 3], guided[0, 4, 4] = -2.0, 1.0
    e = explanation(guided, (6, 8))
    assert e[2, 3] == 1 and e[4, 4] == 0.5


def test_area_under_curve_is_the_trapezoid_over_unit_width():
    assert area_under_curve(np.array([1.0, 1.0, 1.0])) == 1.0
    assert area_under_curve(np.array([1.0, 0.0])) == 0.5
    assert area_under_curve(np.array([0.0, 1.0, 0.0, 0.0, 0.0])) == 0.25


def test_cost_report_per_row():
    cost = Cost(rows=4, seconds=0.2, model_passes=84)
    assert cost.as_json() == {"rows": 4, "seconds": 0.2, "ms_per_row": 50.0, "passes_per_row": 21.0}


def test_pointing_game_tolerance_and_classes():
    boxes = [(100, 100, 150, 140, 3), (10, 10, 20, 20, None)]
    rows = [MetricRow(3, 0.5, image="a.jpg", peak=(165, 120)), MetricRow(3, 0.5, image="b.jpg", peak=(165, 120))]
    assert pointing_game(rows, Scoring(boxes={"a.jpg": boxes})) == [{"pointing_game": 100}, {"pointing_game": None}]
    assert points_at((165, 120), boxes, 3) == 100  # 15 px right of the box
    assert points_at((166, 120), boxes, 3) == 0
    assert points_at((120, 84), boxes, 3) == 0
    assert points_at((120, 120), boxes, 4) == 0  # box of another class; the class-less box still counts
    assert points_at((30, 30), boxes, 4) == 100
    assert points_at((30, 30), [(0, 0, 5, 5, 1)], 2) is None  # no box for that class: not counted


def test_read_boxes(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("image,x0,y0,x1,y1,class\na.jpg,1,2,30,40,cat\nsub\\b.jpg,0,0,5,5,1\nb2.jpg,0,0,5,5\n")
    assert read_boxes(path, ["dog", "cat"]) == {"a.jpg": [(1, 2, 30, 40, 1)], "sub/b.jpg": [(0, 0, 5, 5, 1)],
                                                "b2.jpg": [(0, 0, 5, 5, None)]}
    for text, message in [("a.jpg,1,2,3\n", "expected image,x0,y0,x1,y1[,class], got 4 fields"),
                          ("a.jpg,1,2,x,4\n", "box corners must be numbers"),
                          ("a.jpg,5,2,1,4\n", "expected x0 <= x1 and y0 <= y1"),
                          ("a.jpg,1,2,3,4,cow\n", "no class named 'cow'")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)) as error:
            read_boxes(path, ["dog", "cat"])
        assert f"{path}:1" in str(error.value) and "\n" not in str(error.value)
