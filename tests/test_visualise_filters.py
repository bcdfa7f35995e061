"""`onnxcam filters`: a convolution's filters drawn from the graph's weights, named after the PyTorch modules."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxcam.runner.cli import main
from onnxcam.runner.visualise.filters import convolutions

torch = pytest.importorskip("torch")


def test_the_first_layer_drawn_tile_by_tile(exported, tmp_path, capsys):
    loaded, result = exported("torchvision:resnet18")
    out = tmp_path / "filters.png"
    assert main(["filters", str(result.path), "--out", str(out), "--tile", "7"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == f"onnxcam filters: conv1  weight [64, 3, 7, 7], stride [2, 2], groups 1 -> {out}"
    picture = cv2.imread(str(out))
    assert picture.shape == (8 * 9 + 2, 8 * 9 + 2, 3), "64 filters: an 8x8 grid of 7 px tiles with 2 px gaps"
    weight = loaded.model.conv1.weight.detach().numpy()
    for k in (0, 9, 63):
        expected = weight[k].transpose(1, 2, 0)
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        y, x = 2 + (k // 8) * 9, 2 + (k % 8) * 9
        drawn = picture[y:y + 7, x:x + 7, ::-1] / 255  # BGR on disk, RGB weights
        assert np.abs(drawn - expected).max() <= 0.5 / 255 + 1e-6, f"filter {k}, each scaled on its own"


def test_list_names_every_convolution_after_its_module(exported, capsys):
    loaded, result = exported("torchvision:resnet18")
    assert main(["filters", str(result.path), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    modules = [name for name, m in loaded.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert [line.split()[1] for line in lines] == modules
    assert lines[4].startswith("#5    layer1.1.conv2  weight [64, 64, 3, 3]")


def test_a_deeper_layer_by_name_or_number_is_grey(exported, tmp_path, capsys):
    _, result = exported("torchvision:resnet18")
    by_name, by_number = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["filters", str(result.path), "--out", str(by_name), "--layer", "layer1.1.conv2"]) == 0
    assert main(["filters", str(result.path), "--out", str(by_number), "--layer", "#5"]) == 0
    a, b = cv2.imread(str(by_name)), cv2.imread(str(by_number))
    assert np.array_equal(a, b) and a.shape == (8 * 34 + 2, 8 * 34 + 2, 3)
    assert np.array_equal(a[..., 0], a[..., 2]), "grey: the mean over the input channels"


@pytest.mark.parametrize(("argv", "expected"), [
    (["--layer", "layer1.1.conv3", "--out", "x.png"], "--layer: no convolution 'layer1.1.conv3' in "),
    (["--out", "x.webq"], "OpenCV cannot write '.webq' files; use .png or .jpg"),
    ([], "--out: where to write the picture"),
])
def test_mistakes_are_one_line(exported, tmp_path, capsys, argv, expected, monkeypatch):
    _, result = exported("torchvision:resnet18")
    monkeypatch.chdir(tmp_path)
    assert main(["filters", str(result.path), *argv]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcam filters: error: ") and expected in lines[0]
    if "no convolution" in expected:
        assert "did you mean layer1.1.conv2" in lines[0] and "--list" in lines[0]


def test_any_onnx_file_numbers_its_convolutions(tmp_path):
    weight = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2]), helper.make_node("Relu", ["y"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [numpy_helper.from_array(weight, "w")])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, ir_version=9), str(path))
    (layer,) = convolutions(path)
    assert layer.name == "#1" and layer.stride == (2, 2) and np.array_equal(layer.weight, weight)
