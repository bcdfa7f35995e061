"""The stages and the local engine with a model written in NumPy (no export, no ONNX Runtime): targets and
follow-ups, maps, costs, failures, and a whole run through the engine, checked against closed forms."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from numpy_model import GRID, SIZE, NumpyModel, graph_info, metadata_only_graph
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.manifest import Targets, load_manifest
from onnxcam.runner.model.graph import probabilities
from onnxcam.runner.run import Run
from onnxcam.runner.size import Size
from onnxcam.runner.stages.explain import ExplainStage
from onnxcam.runner.stages.items import DecodedImage
from onnxcam.runner.targets import TargetPlan
from runner_helpers import FlakyBackend, read_index, write_images, write_manifest


def decoded(seed: int) -> DecodedImage:
    rng = np.random.default_rng(seed)
    tensor = rng.normal(0, 1, (3, SIZE, SIZE)).astype(np.float32)
    return DecodedImage(ImageRef(f"img{seed}.png", f"img{seed}.png"), size=Size(SIZE, SIZE),
                        render_size=Size(SIZE, SIZE), image=np.zeros((SIZE, SIZE, 3), np.uint8), tensor=tensor,
                        region=(0, 0, SIZE, SIZE))


def test_topk_follow_ups_maps_and_costs():
    model, info = NumpyModel(), graph_info()
    stage = ExplainStage(model, info, TargetPlan(Targets("topk", k=3), info.labels, "softmax"),
                         {"gradcam": {"guided_weights": False}, "cam": {}}, None, batch_size=2)
    images = [decoded(seed) for seed in range(3)]
    result = stage(images)
    # top-1 passes in batches of 2; each batch's follow-ups (2 per image) run before the next top-1 pass
    assert model.batches == [2, 2, 2, 1, 2]
    assert sorted(r.decoded.ref.key for r in result.images) == ["img0.png", "img1.png", "img2.png"]
    for image in result.images:
        x = image.decoded.tensor
        activations = x.reshape(3, GRID, SIZE // GRID, GRID, SIZE // GRID).mean(axis=(2, 4))
        logits = activations.mean(axis=(1, 2)) @ model.weights.T
        scores = probabilities(logits[None], "softmax")[0]
        top3 = list(np.argsort(-scores)[:3])
        assert [t.target_class for t in image.targets] == top3 and image.pred[0] == top3[0]
        for target in image.targets:
            assert target.score == pytest.approx(scores[target.target_class], rel=1e-6)
            cam = np.einsum("c,chw->hw", model.weights[target.target_class], activations)
            np.testing.assert_allclose(target.maps["cam"], cam, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(target.maps["gradcam"], np.maximum(cam / GRID**2, 0), rtol=1e-5, atol=1e-7)
    assert result.costs.methods["gradcam"].rows == 9 and result.costs.methods["cam"].model_passes == 0
    assert result.costs.model_seconds > 0


def test_a_failed_model_batch_fails_only_its_images():
    info = graph_info()
    flaky = FlakyBackend(NumpyModel(), 2, "device lost")
    stage = ExplainStage(flaky, info, TargetPlan(Targets("topk", k=2), info.labels, "softmax"),
                         {"gradcam": {"guided_weights": False}}, None, batch_size=2)
    result = stage([decoded(seed) for seed in range(3)])
    by_key = {r.decoded.ref.key: r for r in result.images}
    assert len(result.images) == 3
    # the second model batch holds the follow-ups of img0 and img1: both fail whole, img2 goes on
    assert {key for key, r in by_key.items() if r.error} == {"img0.png", "img1.png"}
    assert {r.error for r in result.images if r.error} == {"the model failed on this batch (numpy: device lost)"}
    assert by_key["img0.png"].targets == [] and len(by_key["img2.png"].targets) == 2


def test_a_whole_run_with_the_numpy_model(tmp_path, capsys):
    """Run + local engine + write stage with a backend that is not ONNX Runtime: rows, files, costs, resume."""
    model = metadata_only_graph(tmp_path / "numpy.onnx")
    write_images(tmp_path / "images", 5, size=(40, 56))
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    manifest = load_manifest(write_manifest(tmp_path, model, tmp_path / "images", methods=["gradcam", "cam"],
                                            targets={"topk": 2}))
    numpy_model = NumpyModel()
    tally = Run(manifest, quiet=True, backend=numpy_model).run()
    assert (tally.images, tally.ok, tally.errors, tally.rows) == (6, 5, 1, 5 * 2 * 2 + 1)
    rows = read_index(tmp_path / "out")
    assert {row["image"] for row in rows if row["status"] == "error"} == {"broken.png"}
    for row in rows:
        if row["status"] == "ok":
            overlay = cv2.imread(str(tmp_path / "out" / row["overlay_path"]))
            assert overlay.shape == (40, 56, 3) and np.load(tmp_path / "out" / row["heatmap_path"]).shape == (4, 4)
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    assert report["provider"] == "numpy" and report["cost"]["methods"]["cam"]["rows"] == 10
    write_images(tmp_path / "images", 7, size=(40, 56))
    again = Run(manifest, quiet=True, backend=numpy_model).run()
    assert (again.images, again.already_done) == (2, 6), "only the two new images run"
    assert len(read_index(tmp_path / "out")) == 7 * 4 + 1
