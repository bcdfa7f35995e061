"""`onnxcam run` on a segmenter (the toy segmenter of tests/toy_models.py at 48x64): its targets (the classes present,
listed classes, ground-truth label images), the methods that serve it, its outputs, and the mistakes a user can make.

The references are the PyTorch model itself (scores, regions, gradients by autograd) and ONNX Runtime on the graph,
not the runner's own code path. The test images have the model input's size, so the model sees them unresized.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.config import Targets
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.inputs.masks import MaskError, read_label_image
from onnxcam.runner.manifest import ManifestError, load_manifest
from onnxcam.runner.model.backend import OnnxRuntimeBackend
from onnxcam.runner.model.graph import PREDICTED_MASK, read_graph_info
from onnxcam.runner.stages import build_stages, output_sets
from onnxcam.runner.targets import TargetPlan
from PIL import Image
from runner_helpers import read_index, write_images, write_manifest

torch = pytest.importorskip("torch")

SIZE = (48, 64)
SERVING = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "guided_backprop",
           "guided_gradcam", "saliency", "smoothgrad", "occlusion", "scorecam"]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def segmenter(exported):
    loaded, result = exported("toy_models:segmenter", input_size=SIZE, saliency=True)
    return loaded.model, result.path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("seg") / "images"
    write_images(folder, 3, size=SIZE)
    return folder


def model_input(path: Path) -> torch.Tensor:
    """The normalised input [1,3,H,W] float64, computed here (the image has the model's size)."""
    rgb = cv2.imread(str(path))[:, :, ::-1] / 255.0
    return torch.from_numpy(((rgb - MEAN) / STD).transpose(2, 0, 1)[None].copy())


def scores(model, x: torch.Tensor) -> torch.Tensor:
    """The model's class scores per pixel [K,H,W], in float64."""
    with torch.no_grad():
        return model.double()(x)["out"][0]


def region_probability(out: torch.Tensor, region: np.ndarray, target: int) -> float:
    """Softmax over classes of each class's score averaged over the region, at the target."""
    mask = torch.from_numpy(region.astype(np.float64))
    logits = (out * mask).sum(dim=(1, 2)) / mask.sum()
    return float(torch.softmax(logits, 0)[target])


def run_cli(capsys, manifest: Path) -> tuple[int, str]:
    code = main(["run", str(manifest), "--quiet"])
    return code, capsys.readouterr().out


def stage_results(model_path: Path, manifest: Path, paths: list[Path], openvino: bool = False):
    """The batch stage's results for these images (raw maps, before any rendering)."""
    m = load_manifest(manifest)
    info = read_graph_info(model_path)
    if openvino:
        from onnxcam.runner.model.openvino_backend import OpenVinoBackend

        backend = OpenVinoBackend(model_path, output_sets(m, info), precision="f32")
    else:
        backend = OnnxRuntimeBackend(model_path, ["cpu"], output_sets(m, info))
    stages = build_stages(m, info, backend)
    decoded = [stages.read(ImageRef(path.name, str(path))) for path in paths]
    return {result.decoded.ref.key: result for result in stages.explain(decoded).images}


def test_present_classes_get_one_row_each_with_their_region(segmenter, images, tmp_path, capsys):
    model, path = segmenter
    manifest = write_manifest(tmp_path, path, images, methods=["gradcam", "hirescam"])
    code, out = run_cli(capsys, manifest)
    assert code == 0, out
    rows = read_index(tmp_path / "out")
    regions = 0
    for image in sorted(images.iterdir()):
        predicted = scores(model, model_input(image))
        label_map = predicted.argmax(0).numpy()
        shares = np.bincount(label_map.ravel(), minlength=4) / label_map.size
        present = {c for c in range(4) if shares[c] >= 0.01}
        assert len(present) >= 2, "the test images have several classes"
        mine = [row for row in rows if row["image"] == image.name]
        assert {int(row["target_class"]) for row in mine} == present
        assert len(mine) == 2 * len(present)
        regions += len(present)
        for row in mine:
            t = int(row["target_class"])
            assert row["target_mask"] == "predicted"
            assert float(row["target_share"]) == pytest.approx(shares[t], abs=1e-6)
            assert float(row["target_score"]) == pytest.approx(region_probability(predicted, label_map == t, t),
                                                               rel=1e-4)
            assert int(row["pred_class"]) == int(np.argmax(shares))
            assert float(row["pred_score"]) == pytest.approx(shares.max(), abs=1e-6)
            mask = cv2.imread(str(tmp_path / "out" / row["mask_file"]), cv2.IMREAD_GRAYSCALE)
            np.testing.assert_array_equal(mask, np.where(label_map == t, 255, 0))
    assert f"{len(rows)} rows ({regions} image-class regions x 2 methods)" in out.strip().splitlines()[-1]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert (run["task"], run["targets"], run["regions"], run["rows"]) == ("segmentation", "present", regions, len(rows))


def test_min_area_and_ignore_classes(segmenter, images, tmp_path, capsys):
    model, path = segmenter
    shares = [np.bincount(scores(model, model_input(image)).argmax(0).numpy().ravel(), minlength=4) / (48 * 64)
              for image in sorted(images.iterdir())]
    min_area = float(np.median(np.concatenate(shares)[np.concatenate(shares) > 0]))
    manifest = write_manifest(tmp_path, path, images, targets={"present": {"min_area": min_area,
                                                                           "ignore_classes": [0]}})
    assert run_cli(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    for image, share in zip(sorted(images.iterdir()), shares, strict=True):
        expected = {c for c in range(1, 4) if share[c] >= min_area}
        got = {int(row["target_class"]) for row in rows if row["image"] == image.name and row["status"] == "ok"}
        assert got == expected


def test_background_is_left_out_by_its_label():
    labels = ["__background__", "cat", "dog"]
    plan = TargetPlan(Targets("present"), labels, "softmax", "segmentation")
    assert plan.follow_up(np.array([0.7, 0.25, 0.05])) == (False, [1, 2])
    assert TargetPlan(Targets("present", ignore_classes=[]), labels, "softmax", "segmentation").follow_up(
        np.array([0.7, 0.25, 0.05])) == (True, [1, 2])
    assert TargetPlan(Targets("present", min_area=0.1), ["a", "b", "c"], "softmax", "segmentation").follow_up(
        np.array([0.05, 0.9, 0.05])) == (True, [])
    assert TargetPlan(Targets(default=True), labels, "softmax", "segmentation").targets.kind == "present"
    assert TargetPlan(Targets(default=True), labels, "softmax").targets.kind == "top1"


def test_listed_classes_over_their_predicted_pixels(segmenter, images, tmp_path, capsys):
    model, path = segmenter
    manifest = write_manifest(tmp_path, path, images, targets={"classes": [1, "2"]})
    assert run_cli(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    assert len(rows) == 3 * 2
    for row in rows:
        label_map = scores(model, model_input(images / row["image"])).argmax(0).numpy()
        t = int(row["target_class"])
        assert t in (1, 2) and row["target_mask"] == "predicted"
        assert float(row["target_share"]) == pytest.approx((label_map == t).mean(), abs=1e-6)


def save_indexed(path: Path, label: np.ndarray) -> None:
    image = Image.fromarray(label.astype(np.uint8))
    image.putpalette([v for k in range(256) for v in (k, 255 - k, (7 * k) % 256)])
    image.save(path)


def test_ground_truth_masks_indexed_and_grey_with_ignore_index(segmenter, images, tmp_path, capsys):
    model, path = segmenter
    masks = tmp_path / "masks"
    masks.mkdir()
    first = np.full(SIZE, 0, np.uint8)
    first[10:30, 8:40] = 2
    first[:2] = 255  # unlabelled border
    second = np.full(SIZE, 3, np.uint8)
    second[20:, 30:] = 1
    second[:, :1] = 255
    save_indexed(masks / "img00000.png", first)
    cv2.imwrite(str(masks / "img00001.png"), second)  # grey levels
    assert Image.open(masks / "img00000.png").mode == "P"
    (images.parent / "two").mkdir(exist_ok=True)
    for name in ("img00000.png", "img00001.png"):
        (images.parent / "two" / name).write_bytes((images / name).read_bytes())
    manifest = write_manifest(tmp_path, path, images.parent / "two", methods=["gradcam"],
                              targets={"masks": {"dir": str(masks), "ignore_index": 255}})
    assert run_cli(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    for name, label in (("img00000.png", first), ("img00001.png", second)):
        mine = [row for row in rows if row["image"] == name]
        expected = sorted(set(np.unique(label)) - {255})
        assert sorted(int(row["target_class"]) for row in mine) == expected
        predicted = scores(model, model_input(images / name))
        for row in mine:
            t = int(row["target_class"])
            assert row["target_mask"] == "given"
            assert float(row["target_share"]) == pytest.approx((label == t).mean(), abs=1e-6)
            assert float(row["target_score"]) == pytest.approx(region_probability(predicted, label == t, t), rel=1e-4)
            written = cv2.imread(str(tmp_path / "out" / row["mask_file"]), cv2.IMREAD_GRAYSCALE)
            np.testing.assert_array_equal(written, np.where(label == t, 255, 0))


def test_mask_mistakes_are_error_rows_and_the_others_go_on(segmenter, images, tmp_path, capsys):
    _, path = segmenter
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "img00000.png"), np.zeros((40, 40), np.uint8))  # another size
    out_of_range = np.zeros(SIZE, np.uint8)
    out_of_range[5:9, 5:9] = 7
    cv2.imwrite(str(masks / "img00001.png"), out_of_range)
    (images.parent / "three").mkdir(exist_ok=True)
    for name in ("img00000.png", "img00001.png", "img00002.png"):
        (images.parent / "three" / name).write_bytes((images / name).read_bytes())
    (images.parent / "three" / "img00003.png").write_bytes((images / "img00002.png").read_bytes())
    cv2.imwrite(str(masks / "img00003.png"), np.ones(SIZE, np.uint8))
    manifest = write_manifest(tmp_path, path, images.parent / "three", targets={"masks": str(masks)})
    code, out = run_cli(capsys, manifest)
    assert code == 0, out
    rows = {row["image"]: row for row in read_index(tmp_path / "out")}
    errors = {name: rows[name]["error"] for name in rows if rows[name]["status"] == "error"}
    assert set(errors) == {"img00000.png", "img00001.png", "img00002.png"}
    assert errors["img00000.png"] == (f"targets.masks: {masks / 'img00000.png'} is 40x40 and its image 64x48; a "
                                      "label image must have its image's size")
    assert errors["img00001.png"].startswith(f"targets.masks: {masks / 'img00001.png'} holds class 7, out of range: "
                                             "the model has 4 classes (0..3); fix the mask, or set "
                                             "targets.masks.ignore_index to 7")
    assert errors["img00002.png"].startswith(f"targets.masks: no label image {masks / 'img00002'}.png")
    assert all("\n" not in error for error in errors.values())
    assert rows["img00003.png"]["status"] == "ok" and rows["img00003.png"]["target_class"] == "1"


@pytest.mark.parametrize(("sections", "message"), [
    ({"targets": {"topk": 2}}, "targets.topk: ranks a classifier's scores, and this model is a segmenter; use present "
                               "(every class predicted), classes or masks"),
    ({"targets": {"threshold": 0.5}}, "targets.threshold: ranks a classifier's scores"),
    ({"targets": {"classes": [4]}}, "targets.classes: class 4 is out of range; the model has 4 classes (0..3)"),
    ({"methods": ["cam"]}, "methods: 'cam' cannot explain a segmenter"),
    ({"methods": ["fixations"]}, "methods: 'fixations' cannot explain a segmenter"),
    ({"methods": ["patches"]}, "methods: 'patches' cannot explain a segmenter"),
])
def test_what_cannot_serve_a_segmenter_is_one_line(segmenter, images, tmp_path, capsys, sections, message):
    _, path = segmenter
    code, out = run_cli(capsys, write_manifest(tmp_path, path, images, **sections))
    assert code == 2
    assert out.count("\n") == 1 and message in out, out


def test_segmentation_targets_on_a_classifier_are_one_line():
    for targets in (Targets("present"), Targets("masks")):
        with pytest.raises(ManifestError, match=rf"^targets\.{targets.kind}: explains regions of a segmenter's output, "
                                                "and this model is a classifier; use top1, topk"):
            TargetPlan(targets, ["a", "b"], "softmax")


def test_every_serving_method_gives_a_finite_map(segmenter, images, tmp_path):
    model, path = segmenter
    manifest = write_manifest(tmp_path, path, images, methods=SERVING, smoothgrad={"samples": 4},
                              occlusion={"patch": 16, "stride": 8})
    results = stage_results(path, manifest, sorted(images.iterdir()))
    for result in results.values():
        assert not result.error and len(result.targets) >= 2
        for target in result.targets:
            for name in SERVING:
                values = target.maps[name]
                assert np.isfinite(values).all(), name
                assert np.ptp(values) > 0, f"{name}: a constant map"
            for name in ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam",
                         "saliency", "smoothgrad"):
                assert target.maps[name].min() >= 0, name


def autograd_maps(model, x: torch.Tensor, region: np.ndarray, target: int) -> dict[str, np.ndarray]:
    """Grad-CAM and HiResCAM at the encoder's output, and saliency, from S = sum over the region of the target's
    scores (pytorch-grad-cam's SemanticSegmentationTarget), by PyTorch's autograd."""
    model = model.double()
    kept = {}
    handle = model.encoder.register_forward_hook(lambda _, __, output: kept.setdefault("a", output))
    x = x.clone().requires_grad_(True)
    out = model(x)["out"][0]
    handle.remove()
    score = (out[target] * torch.from_numpy(region.astype(np.float64))).sum()
    a = kept["a"]
    g, gx = torch.autograd.grad(score, [a, x])
    a, g = a[0].detach().numpy(), g[0].numpy()
    return {"gradcam": np.maximum(np.einsum("c,chw->hw", g.mean(axis=(1, 2)), a), 0),
            "hirescam": np.maximum((g * a).sum(0), 0), "saliency": np.abs(gx[0].numpy()).max(0)}


def test_gradient_maps_are_autograds_over_the_predicted_region(segmenter, images, tmp_path):
    model, path = segmenter
    manifest = write_manifest(tmp_path, path, images, methods=["gradcam", "hirescam", "saliency"])
    for key, result in stage_results(path, manifest, sorted(images.iterdir())).items():
        x = model_input(images / key)
        label_map = scores(model, x).argmax(0).numpy()
        for target in result.targets:
            t = target.target_class
            np.testing.assert_array_equal(target.mask, label_map == t)
            reference = autograd_maps(model, x, label_map == t, t)
            for name, expected in reference.items():
                np.testing.assert_allclose(target.maps[name], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_a_given_mask_feeds_through(segmenter, images, tmp_path):
    model, path = segmenter
    image = images / "img00000.png"
    x = model_input(image)
    label_map = scores(model, x).argmax(0).numpy().astype(np.uint8)
    same, other = tmp_path / "same", tmp_path / "other"
    same.mkdir()
    other.mkdir()
    cv2.imwrite(str(same / image.name), label_map)  # the prediction itself, as ground truth
    box = np.full(SIZE, 255, np.uint8)
    t = int(np.bincount(label_map.ravel()).argmax())
    box[8:40, 10:50] = t
    cv2.imwrite(str(other / image.name), box)
    predicted = stage_results(path, write_manifest(tmp_path, path, images, methods=["gradcam"]), [image])
    given_same = stage_results(path, write_manifest(tmp_path, path, images, methods=["gradcam"],
                                                    targets={"masks": str(same)}), [image])
    given_other = stage_results(path, write_manifest(tmp_path, path, images, methods=["gradcam"],
                                                     targets={"masks": str(other)}), [image])
    by_class = {target.target_class: target for target in predicted[image.name].targets}
    for target in given_same[image.name].targets:
        assert target.mask_kind == "given"
        np.testing.assert_allclose(target.maps["gradcam"], by_class[target.target_class].maps["gradcam"], rtol=1e-5,
                                   atol=1e-7)
    (boxed,) = given_other[image.name].targets
    assert boxed.target_class == t
    expected = autograd_maps(model, x, box == t, t)["gradcam"]
    np.testing.assert_allclose(boxed.maps["gradcam"], expected, rtol=1e-4, atol=1e-6 * expected.max())
    assert np.abs(boxed.maps["gradcam"] - by_class[t].maps["gradcam"]).max() > 0.01 * expected.max()


def test_occlusion_and_scorecam_score_the_original_region(segmenter, images, tmp_path):
    """Occlusion with non-overlapping windows: each window's value is the region's probability on the image less
    that on the image with the window filled (0: the mean colour); Score-CAM's channel weights are the softmax over
    channels of the region's mean score on the image masked by each upsampled channel. The region is the original
    prediction's, kept fixed."""
    model, path = segmenter
    image = images / "img00001.png"
    manifest = write_manifest(tmp_path, path, images, methods=["occlusion", "scorecam"],
                              occlusion={"patch": 16, "stride": 16})
    (result,) = stage_results(path, manifest, [image]).values()
    x = model_input(image)
    model = model.double()
    label_map = scores(model, x).argmax(0).numpy()
    kept = {}
    handle = model.encoder.register_forward_hook(lambda _, __, output: kept.__setitem__("a", output))
    for target in result.targets:
        t = target.target_class
        region = label_map == t
        original = region_probability(scores(model, x), region, t)
        expected = np.zeros(SIZE)
        for y in range(0, 48, 16):
            for x0 in range(0, 64, 16):
                occluded = x.clone()
                occluded[:, :, y:y + 16, x0:x0 + 16] = 0
                expected[y:y + 16, x0:x0 + 16] = original - region_probability(scores(model, occluded), region, t)
        np.testing.assert_allclose(target.maps["occlusion"], expected, rtol=1e-4, atol=1e-6)
        scores(model, x)
        a = kept["a"]
        upsampled = torch.nn.functional.interpolate(a.transpose(0, 1), size=SIZE, mode="bilinear", align_corners=True)
        logits = []
        for channel in upsampled[:, 0]:
            low, high = channel.min(), channel.max()
            masked = x * ((channel - low) / (high - low + 1e-8))
            out = scores(model, masked)
            logits.append(float((out[t] * torch.from_numpy(region.astype(np.float64))).sum() / region.sum()))
        weights = torch.softmax(torch.tensor(logits), 0).numpy()
        expected = np.maximum(np.einsum("c,chw->hw", weights, a[0].numpy()), 0)
        np.testing.assert_allclose(target.maps["scorecam"], expected, rtol=1e-4, atol=1e-6 * expected.max())
    handle.remove()


def test_overlays_outline_the_region_and_label_maps_are_the_graphs(segmenter, images, tmp_path, capsys):
    _, path = segmenter
    manifest = write_manifest(tmp_path, path, images, methods=["gradcam", "guided_backprop"],
                              output={"dir": str(tmp_path / "out"), "overlays": {"format": "png"},
                                      "label_maps": True})
    assert run_cli(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for row in rows:
        mask = cv2.imread(str(tmp_path / "out" / row["mask_file"]), cv2.IMREAD_GRAYSCALE) > 0
        overlay = cv2.imread(str(tmp_path / "out" / row["overlay_path"]))
        cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
        inner = cv2.erode(mask.astype(np.uint8), cross, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        border = mask & ~inner  # the region's pixels with a 4-neighbour outside it (or beyond the picture's edge)
        white = (overlay == 255).all(axis=2)
        assert border.any()
        np.testing.assert_array_equal(white & mask, border, "the region's outline: its border, in white")
        assert not (white & ~mask).any(), "a line inside the region, one pixel wide"
    for image in sorted(images.iterdir()):
        written = Image.open(tmp_path / "out" / f"{image.name}.label_map.png")
        assert written.mode == "P"
        x = model_input(image).numpy().astype(np.float32)
        (label_map,) = session.run(["label_map"], {"input": x, "target": np.array([-1]), "target_mask": PREDICTED_MASK})
        np.testing.assert_array_equal(np.asarray(written), label_map[0])


def test_an_ambiguous_palette_is_refused(tmp_path):
    label = np.zeros((4, 5), np.uint8)
    label[1:3, 1:4] = 2
    image = Image.fromarray(label)
    image.putpalette([0, 0, 0, 9, 9, 9, 9, 9, 9])  # classes 1 and 2 share a colour
    image.save(tmp_path / "a.png")
    with pytest.raises(MaskError, match=r"^targets\.masks: .*a\.png: its palette gives 2 indices the colour #090909; "
                                        r"save the classes as grey levels instead$"):
        read_label_image(tmp_path / "a.png")
    image.putpalette([0, 0, 0, 9, 9, 9, 7, 7, 7])
    image.save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "b.png"), label)


def test_openvino_feeds_the_regions_as_onnx_runtime_does(segmenter, images, tmp_path):
    pytest.importorskip("openvino")
    _, path = segmenter
    image = images / "img00002.png"
    masks = tmp_path / "masks"
    masks.mkdir()
    box = np.zeros(SIZE, np.uint8)
    box[5:30, 20:60] = 2
    cv2.imwrite(str(masks / image.name), box)
    for targets in ({"present": {"ignore_classes": []}}, {"masks": str(masks)}):
        manifest = write_manifest(tmp_path, path, images, methods=["gradcam", "occlusion"], targets=targets,
                                  occlusion={"patch": 16, "stride": 16})
        (ours,) = stage_results(path, manifest, [image]).values()
        (theirs,) = stage_results(path, manifest, [image], openvino=True).values()
        assert [t.target_class for t in ours.targets] == [t.target_class for t in theirs.targets]
        for a, b in zip(ours.targets, theirs.targets, strict=True):
            assert a.mask_kind == b.mask_kind and a.score == pytest.approx(b.score, rel=1e-4)
            np.testing.assert_array_equal(a.mask, b.mask)
            for name in ("gradcam", "occlusion"):
                largest = np.abs(a.maps[name]).max()
                np.testing.assert_allclose(b.maps[name], a.maps[name], rtol=1e-3, atol=1e-4 * largest)


def test_extra_passes_feed_a_batchs_shared_region_once():
    """Edited copies of one row share its region: a batch whose inputs all have the same region feeds it as
    [1,H,W]; a batch mixing regions feeds one per input. The scores are the same either way."""
    from onnxcam.runner.model.passes import ExtraPasses

    class Recorder:
        def __init__(self):
            self.fed: list[tuple[int, ...]] = []

        def run(self, outputs, inputs, targets, masks):
            self.fed.append(masks.shape)
            area = np.broadcast_to(masks, (len(inputs), *masks.shape[1:])).sum(axis=(1, 2))
            return {"logits": np.stack([area * (inputs.mean(axis=(1, 2, 3)) + k) for k in range(3)], axis=1)}

    from onnxcam.runner.model.graph import GraphInfo, Preprocessing

    graph = GraphInfo(Preprocessing((4, 5), (0.5,) * 3, (0.25,) * 3), ["a", "b", "c"], "layer", (1, 1, 1), "softmax",
                      [], False, "toy", task="segmentation")
    recorder = Recorder()
    passes = ExtraPasses(recorder, graph)
    first, second = np.zeros((4, 5), bool), np.zeros((4, 5), bool)
    first[:2], second[:, :1] = True, True
    stream = [(np.full((3, 4, 5), k, np.float32), 1, first if k < 5 else second) for k in range(8)]
    logits = passes.scores(iter(stream), batch_size=4, kind="logit")
    assert recorder.fed == [(1, 4, 5), (4, 4, 5)]
    np.testing.assert_allclose(logits, [m.sum() * (k + 1) for k, (_, _, m) in enumerate(stream)])
