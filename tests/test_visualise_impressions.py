"""`onnxcam impressions`: class impressions from noise, through ONNX Runtime, recognised by the model as written."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.model.backend import OnnxRuntimeBackend
from onnxcam.runner.model.graph import probabilities, read_graph_info
from onnxcam.runner.visualise.impressions import total_variation

torch = pytest.importorskip("torch")

CLASSES = (1, 954)  # goldfish, banana


def scored(model, paths: list, classes) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Top-1 classes, the classes' probabilities and the TV of the PNGs as written (each is the model's input)."""
    info = read_graph_info(model)
    pictures = [cv2.imread(str(path))[:, :, ::-1] for path in paths]
    assert all(picture.shape == (*info.preprocessing.size, 3) for picture in pictures)
    mean, std = np.asarray(info.preprocessing.mean), np.asarray(info.preprocessing.std)
    x = np.stack([((p / 255 - mean) / std).transpose(2, 0, 1) for p in pictures]).astype(np.float32)
    logits = OnnxRuntimeBackend(model, ["cpu"]).run(("logits",), x, np.zeros(len(x), np.int64))["logits"]
    scores = probabilities(logits, "softmax")
    return scores.argmax(axis=1), scores[np.arange(len(classes)), list(classes)], [total_variation(p) for p in pictures]


@pytest.mark.slow
def test_impressions_are_the_class_and_the_prior_makes_them_smoother(exported, tmp_path, capsys):
    model = exported("efficientnet-lite0", saliency=True, guided=False)[1].path
    runs = {}
    for tv in ("0.3", "0"):
        out = tmp_path / f"tv{tv}"
        assert main(["impressions", str(model), "--classes", ",".join(map(str, CLASSES)), "--out", str(out),
                     "--tv", tv, "--steps", "200", "--providers", "cpu"]) == 0
        printed = capsys.readouterr().out
        paths = [next(out.glob(f"{c:03d}-*.png")) for c in CLASSES]
        runs[tv] = scored(model, paths, CLASSES)
        print(printed)
        top1, probability, _ = runs[tv]
        assert list(top1) == list(CLASSES) and probability.min() >= 0.9, (tv, top1, probability)
    smooth, rough = runs["0.3"][2], runs["0"][2]
    assert all(s < 0.5 * r for s, r in zip(smooth, rough, strict=True)), (smooth, rough)


@pytest.mark.parametrize(("spec", "argv", "expected"), [
    ("efficientnet-lite0", ["--classes", "1"], "has no plain input gradients, which impressions climb; re-export it "
                                               "with --saliency"),
    ("toy_models:relu_net", ["--classes", "2,9"], "--classes: no class '9'; give class numbers 0..4"),
    ("toy_models:relu_net", ["--classes", "1", "--providers", "tpu"], "--providers: tpu; use auto, cuda, cpu or "
                                                                        "cuda,cpu"),
])
def test_mistakes_are_one_line(exported, tmp_path, capsys, spec, argv, expected):
    model = exported(spec, saliency=True) if spec.startswith("toy") else exported(spec)
    assert main(["impressions", str(model[1].path), "--out", str(tmp_path), *argv]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcam impressions: error: ") and lines[0].endswith(expected)
