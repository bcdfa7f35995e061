"""Keras and TensorFlow models through the ONNX source: Keras 3's Xception exported by Keras itself, and MobileNetV2
through a TensorFlow SavedModel and tf2onnx, held to Keras' own numbers (tf.GradientTape, float64) computed in
.venv-tf (tools/keras_models.py) on real photographs preprocessed by the runner."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from onnxcam.exporter.onnx_source import export_plain_model, load_plain_model
from onnxcam.exporter.parity import INPUT_GRADIENT_COSINE, INPUT_GRADIENT_FACTOR, cosine, relative_error
from onnxcam.runner.cli import main
from onnxcam.runner.inputs.preprocess import to_input
from onnxcam.runner.model.graph import Preprocessing, probabilities
from runner_helpers import read_index, write_manifest
from sample_photos import write_photos
from tf_env import run_keras, tf_python

pytestmark = pytest.mark.slow  # builds Keras models in TensorFlow: minutes

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
MODELS = {  # file made by tools/keras_models.py -> (the Keras layer, input side)
    "xception": ("block14_sepconv2_act", 299),
    "mobilenetv2": ("out_relu", 224),
}
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory) -> Path:
    tf_python()
    folder = tmp_path_factory.mktemp("keras")
    run_keras(["xception", str(folder)], timeout=900)
    run_keras(["savedmodel", str(folder)], timeout=900)
    write_photos(folder / "photos", PHOTOS)
    return folder


@pytest.fixture(scope="module")
def explained(keras_models):
    """name -> the explain graph of `name`.onnx, Keras' reference on the photographs as the runner feeds them, and
    those inputs (NCHW); each built once."""
    done = {}

    def get(name: str):
        if name not in done:
            done[name] = _explain(keras_models, name)
        return done[name]

    return get


def _explain(folder: Path, name: str) -> tuple[Path, dict[str, np.ndarray], np.ndarray]:
    layer, side = MODELS[name]
    pre = Preprocessing(size=(side, side), mean=(0.5,) * 3, std=(0.5,) * 3)  # Keras' 'tf' mode: x / 127.5 - 1
    out = folder / f"{name}-explain.onnx"
    plain = load_plain_model(f"onnx:{folder / name}.onnx")
    export_plain_model(plain, layer, out, pre, [], saliency=True, log=lambda _: None)
    photos = sorted((folder / "photos").iterdir())
    x = np.stack([to_input(cv2.imread(str(photo)), pre)[0] for photo in photos])
    np.save(folder / f"{name}-inputs.npy", x.transpose(0, 2, 3, 1))
    run_keras(["reference", str(folder / f"{name}.keras"), str(folder / f"{name}-inputs.npy"),
               str(folder / f"{name}-reference.npz"), "--layer", layer], timeout=900)
    return out, dict(np.load(folder / f"{name}-reference.npz")), x


def graph_outputs(path: Path, x: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x.astype(np.float32), "target": target}), strict=True))


def largest_relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("name", list(MODELS))
def test_the_graph_gives_keras_numbers(explained, name):
    out, reference, x = explained(name)
    actual = graph_outputs(out, x, np.full(len(x), -1, np.int64))
    np.testing.assert_array_equal(actual["logits"].argmax(axis=1), reference["classes"])
    assert largest_relative(actual["logits"], reference["logits"]) <= TOLERANCE
    # the softmax the ONNX source cut, put back, is Keras' model.predict
    np.testing.assert_allclose(probabilities(actual["logits"], "softmax"), reference["probabilities_float32"],
                               atol=1e-6)
    for output in ("activations", "gradients"):
        expected = reference[output].transpose(0, 3, 1, 2)
        assert largest_relative(actual[output], expected) <= TOLERANCE, output
    # Back to the input, float32 and float64 settle a few ReLU and max-pool near-ties differently, each moving one
    # receptive-field patch (Xception: 4.3e-3 norm-wise): the export gate's input-gradient bounds
    expected_input = reference["input_gradients"].transpose(0, 3, 1, 2)
    assert relative_error(actual["plain_input_gradients"], expected_input) <= INPUT_GRADIENT_FACTOR * 1e-3
    assert cosine(actual["plain_input_gradients"], expected_input) >= INPUT_GRADIENT_COSINE


def test_onnxcam_runs_keras_gradcam_recipe(keras_models, explained, tmp_path):
    """`onnxcam run` on the Xception graph: each photograph's Grad-CAM heatmap (compact, at the target layer's 10x10,
    divided by its largest value) equals keras.io's recipe (tf.GradientTape, pooled gradients, weighted sum, ReLU)
    to 1e-3 after the same normalisation."""
    out, reference, _ = explained("xception")
    manifest = write_manifest(tmp_path, out, keras_models / "photos", methods=("gradcam",),
                              output={"dir": str(tmp_path / "out"), "heatmaps": "npy"})
    assert main(["run", str(manifest)]) == 0
    rows = sorted(read_index(tmp_path / "out"), key=lambda row: row["image"])
    assert [row["status"] for row in rows] == ["ok"] * len(PHOTOS)
    for row, expected, keras_class in zip(rows, reference["gradcam"], reference["classes"], strict=True):
        assert int(row["target_class"]) == keras_class
        heatmap = np.load(tmp_path / "out" / row["heatmap_path"])
        assert heatmap.shape == expected.shape == (10, 10)
        assert np.abs(heatmap - expected / expected.max()).max() <= 1e-3, row["image"]
