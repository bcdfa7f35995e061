"""Region metrics of a segmenter's rows on cases whose answer is known by construction: energy inside the target
mask, and deletion/insertion scored on the region's mean class score of a model given in closed form."""

import numpy as np
import pytest
from onnxcam.runner.evaluate import metrics
from onnxcam.runner.evaluate.metrics import COLUMNS, REGION_COLUMNS, Evaluation, MetricRow, Scoring, share_inside
from onnxcam.runner.model.graph import GraphInfo, Preprocessing
from onnxcam.runner.model.passes import ExtraPasses

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
H, W = 12, 10


def energy(map_: np.ndarray, mask: np.ndarray | None) -> float | None:
    """energy_inside of one row, through the registry as the batch stage scores it."""
    row = MetricRow(1, 0.5, map_=map_.astype(np.float32), mask=mask)
    (result,) = metrics.score(Evaluation({"energy_inside": {}}), [row], Scoring(), runs_model=True)
    return result["energy_inside"]


def left_half() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[:, :W // 2] = True
    return mask


def test_a_map_entirely_inside_the_mask_scores_one():
    map_ = np.zeros((H, W))
    map_[2:5, 1:4] = np.arange(9).reshape(3, 3) + 1
    assert energy(map_, left_half()) == 1.0


def test_half_the_positive_mass_outside_scores_one_half():
    map_ = np.zeros((H, W))
    map_[3, 1], map_[7, 2] = 2.0, 1.0  # inside: 3
    map_[0, 9], map_[11, 6], map_[5, 5] = 1.5, 1.0, 0.5  # outside: 3
    assert energy(map_, left_half()) == pytest.approx(0.5, abs=1e-12)


def test_negative_values_are_ignored():
    map_ = np.full((H, W), -5.0)
    map_[4, 2] = 1.0
    assert energy(map_, left_half()) == 1.0
    map_[:, W // 2:] = -100.0
    map_[6, 7] = 3.0  # one positive pixel outside, three times the one inside
    assert energy(map_, left_half()) == pytest.approx(0.25, abs=1e-12)


def test_empty_mask_is_not_counted_and_a_map_with_no_positive_mass_scores_zero():
    map_ = np.random.default_rng(0).uniform(0, 1, (H, W))
    assert energy(map_, np.zeros((H, W), bool)) is None
    assert energy(np.full((H, W), -1.0), left_half()) == 0.0
    assert energy(np.zeros((H, W)), left_half()) == 0.0


def test_a_classifier_row_has_no_mask_and_is_not_counted():
    assert energy(np.ones((H, W)), None) is None


def test_a_coarse_map_is_resized_to_the_mask_and_a_guided_map_reduced_over_channels():
    assert energy(np.ones((3, 4)), left_half()) == pytest.approx(0.5, abs=1e-6)  # constant: the mask's share of pixels
    mask = np.zeros((H, W), bool)
    mask[1:4, 1:3] = True  # 6 of 120 pixels
    assert energy(np.full((3, 5), 7.0), mask) == pytest.approx(6 / 120, abs=1e-6)
    guided = np.zeros((3, H, W))
    guided[1, 2, 2], guided[0, 8, 8] = -2.0, 1.0  # guided maps count max |B| over channels, as E does
    assert energy(guided, mask) == pytest.approx(2 / 3, abs=1e-12)


def test_share_inside_is_one_definition_for_any_region():
    map_ = np.array([[1.0, 3.0], [-2.0, 4.0]])
    assert share_inside(map_, np.array([[True, False], [True, False]])) == pytest.approx(1 / 8)
    assert share_inside(map_, np.ones((2, 2), bool)) == 1.0


def test_region_metrics_are_not_a_classifier_index_column():
    assert REGION_COLUMNS == ("energy_inside",)
    assert "energy_inside" not in COLUMNS and metrics.METRICS["energy_inside"].needs_mask


# -- deletion and insertion on the region's score ------------------------------------------------------------------

class RegionBackend:
    """A segmenter in NumPy with two classes: pixel logit 1 = sum_c w * x at that pixel, pixel logit 0 = 0. Fed a
    target mask M, logits[n, k] is class k's pixel logit averaged over M (the explain graph's contract), so the
    region's probability of class 1 is sigmoid(sum_{p in M} c_p / |M|) with c_p = sum_c w x at p."""

    provider, notes = "numpy", []

    def __init__(self, weights: np.ndarray):
        self.weights, self.masks = weights, []

    def run(self, outputs, inputs, targets, masks=None):
        assert outputs == ("logits",)
        assert masks is not None, "an edited image must be scored on the original row's region, not re-predicted"
        self.masks.extend(masks.copy())
        pixel = (inputs * self.weights).sum(axis=1)
        mean = (pixel * masks).sum(axis=(1, 2)) / masks.sum(axis=(1, 2))
        return {"logits": np.stack([np.zeros_like(mean), mean], axis=1)}


class RegionModel(ExtraPasses):
    def __init__(self, weights: np.ndarray):
        info = GraphInfo(Preprocessing(size=weights.shape[1:], mean=MEAN, std=STD), labels=["ground", "shape"],
                         target_layer="", activation_shape=(1, 1, 1), output_activation="softmax", outputs=[],
                         gap_linear_head=False, model="region", task="segmentation")
        self.region = RegionBackend(weights)
        super().__init__(self.region, info)


@pytest.fixture
def segmenter():
    rng = np.random.default_rng(3)
    weights = rng.normal(0, 0.3, (3, H, W)).astype(np.float32)
    x = rng.normal(0, 1, (3, H, W)).astype(np.float32)
    contribution = (weights * x).sum(axis=0).astype(np.float64)  # c_p
    mask = np.zeros((H, W), bool)
    mask[2:9, 3:8] = True  # 35 pixels
    return RegionModel(weights), x, contribution, mask


def sigmoid(value):
    return 1 / (1 + np.exp(-value))


def closed_form_curve(contribution, mask, order, steps, insert):
    """With the mean baseline (0 in normalised space) a pixel's contribution is c_p when present and 0 when removed:
    after the first k pixels of `order` are removed (deletion) or put back (insertion), the region's probability is
    sigmoid(sum of the present pixels' c_p over M / |M|)."""
    per_step = -(-contribution.size // steps)
    inside = (contribution * mask).ravel()[order]
    before = np.concatenate([[0.0], np.cumsum(inside)])[np.minimum(np.arange(steps + 1) * per_step, inside.size)]
    present = before if insert else inside.sum() - before
    return sigmoid(present / mask.sum())


@pytest.mark.parametrize(("metric", "steps"), [("deletion", 20), ("insertion", 20), ("deletion", 7), ("insertion", 12)])
def test_deletion_and_insertion_follow_the_region_mean_score(segmenter, metric, steps):
    model, x, contribution, mask = segmenter
    e = contribution + 10.0 * ~mask  # E ranks every pixel outside the region first: removing them changes nothing
    e = ((e - e.min()) / (e.max() - e.min())).astype(np.float32)
    y = float(sigmoid((contribution * mask).sum() / mask.sum()))
    row = MetricRow(1, y, x, e, mask=mask)
    (result,) = metrics.score(Evaluation({metric: {"steps": steps, "baseline": "mean"}}), [row],
                              Scoring(model, 8), runs_model=True)
    order = np.argsort(-e.ravel(), kind="stable")
    expected = closed_form_curve(contribution, mask, order, steps, insert=metric == "insertion")
    np.testing.assert_allclose(result[f"{metric}_curve"], expected, rtol=1e-5)
    assert result[metric] == pytest.approx(metrics.area_under_curve(expected), rel=1e-5)
    assert all(np.array_equal(fed, mask) for fed in model.region.masks), "every pass is fed the row's own mask"
    outside = (~mask).sum() // -(-H * W // steps)  # the first steps move only pixels outside the region
    unmoved = y if metric == "deletion" else 0.5  # the image's region score, or the baseline's: sigmoid(0)
    np.testing.assert_allclose(result[f"{metric}_curve"][:outside + 1], unmoved, rtol=1e-6)


def test_the_region_score_is_read_as_a_classifier_score(segmenter):
    """Y and every O are the softmax of the region-mean logits at the target. Average drop with E = 1/2 inside the
    region and 0 outside: O is the region's score on the image dimmed inside it, whatever happens outside."""
    model, x, contribution, mask = segmenter
    y = float(sigmoid((contribution * mask).sum() / mask.sum()))
    e = (0.5 * mask).astype(np.float32)
    row = MetricRow(1, y, x, e, mask=mask)
    (result,) = metrics.score(Evaluation({"average_drop": {}}), [row], Scoring(model, 8), runs_model=True)
    mean, std = np.array(MEAN)[:, None, None], np.array(STD)[:, None, None]
    dimmed = ((x * std + mean) * 0.5 - mean) / std
    o = sigmoid(((model.region.weights * dimmed).sum(axis=0) * mask).sum() / mask.sum())
    assert result["average_drop"] == pytest.approx(100 * max(0.0, y - o) / y, rel=1e-4)
    assert result["average_drop"] > 1, "the case is not degenerate"


# -- a segmenter run end to end (needs runner-seg's runner: targets present, the region columns) --------------------

def test_a_segmenter_run_scores_energy_inside_and_deletion_on_each_region(exported, tmp_path, capsys):
    """The toy segmenter on images of its input size: energy_inside is the share of each row's map (its stored heatmap,
    at the map's own size) on the pixels the PyTorch model predicts as the class, and the deletion curve runs from the
    region's score on the image to the same region's score on the baseline (not the baseline's own prediction)."""
    torch = pytest.importorskip("torch")
    import cv2
    from onnxcam.runner.cli import main
    from runner_helpers import read_index, write_images, write_manifest

    size = (48, 64)
    loaded, result = exported("toy_models:segmenter", input_size=size, saliency=True)
    model = loaded.model.double().eval()
    write_images(tmp_path / "images", 2, size=size)
    manifest = write_manifest(tmp_path, result.path, tmp_path / "images", methods=["gradcam", "saliency"],
                              evaluate={"metrics": ["energy_inside", "deletion"], "deletion": {"steps": 4}})
    assert main(["run", str(manifest), "--quiet"]) == 0, capsys.readouterr().out
    mean, std = np.array(MEAN)[:, None, None], np.array(STD)[:, None, None]

    def region_score(x: np.ndarray, region: np.ndarray, target: int) -> float:
        with torch.no_grad():
            out = model(torch.from_numpy(x[None]))["out"][0].numpy()
        logits = (out * region).sum(axis=(1, 2)) / region.sum()
        return float(np.exp(logits[target] - logits.max()) / np.exp(logits - logits.max()).sum())

    rows = read_index(tmp_path / "out")
    assert rows and all(row["status"] == "ok" for row in rows)
    for row in rows:
        rgb = cv2.imread(str(tmp_path / "images" / row["image"]))[:, :, ::-1] / 255.0
        x = ((rgb.transpose(2, 0, 1) - mean) / std).astype(np.float64)
        with torch.no_grad():
            label_map = model(torch.from_numpy(x[None]))["out"][0].numpy().argmax(0)
        t = int(row["target_class"])
        region = label_map == t
        stored = np.load(tmp_path / "out" / row["heatmap_path"]).astype(np.float32)
        m = cv2.resize(stored, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) if stored.shape != size else stored
        positive = np.maximum(m, 0)
        assert float(row["energy_inside"]) == pytest.approx(positive[region].sum() / positive.sum(), abs=1e-4)
        curve = np.array(row["deletion_curve"].split(), float)
        assert curve[0] == pytest.approx(region_score(x, region, t), rel=1e-3)
        assert curve[-1] == pytest.approx(region_score(np.zeros_like(x), region, t), rel=1e-3)


def test_a_region_metric_on_a_classifier_is_one_line(tmp_path):
    from onnxcam.runner.manifest import load_manifest
    from onnxcam.runner.model.backend import ModelError
    from onnxcam.runner.run import check_model
    from runner_helpers import write_manifest

    (tmp_path / "images").mkdir()
    (tmp_path / "model.onnx").write_bytes(b"")
    info = GraphInfo(Preprocessing(size=(8, 8), mean=MEAN, std=STD), labels=["a", "b"], target_layer="",
                     activation_shape=(1, 1, 1), output_activation="softmax", outputs=[], gap_linear_head=False,
                     model="linear")
    manifest = load_manifest(write_manifest(tmp_path, tmp_path / "model.onnx", tmp_path / "images",
                                            evaluate={"metrics": ["deletion", "energy_inside"]}))
    with pytest.raises(ModelError, match="evaluate.metrics: 'energy_inside' scores a segmenter's region, and "
                                         "model.onnx is a classifier; drop energy_inside") as error:
        check_model(manifest, info)
    assert "\n" not in str(error.value)
    check_model(manifest, GraphInfo(**{**info.__dict__, "task": "segmentation"}))
    defaults = load_manifest(write_manifest(tmp_path, tmp_path / "model.onnx", tmp_path / "images", evaluate={}))
    assert "energy_inside" not in defaults.evaluate.metrics and "deletion" in defaults.evaluate.metrics
