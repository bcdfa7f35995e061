"""Serving options (`onnxcam convert`, `onnxcam export --maps --uint8-input`): CAM maps computed in the graph and
uint8 pixels normalised in the graph give what the float graph and the NumPy formulas give, and a run uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnxcam.exporter.serving import convert
from onnxcam.runner.cli import main
from onnxcam.runner.inputs.preprocess import normalised
from onnxcam.runner.manifest import load_manifest
from onnxcam.runner.methods import METHODS
from onnxcam.runner.model.backend import OnnxRuntimeBackend
from onnxcam.runner.model.graph import GRAPH_MAP_METHODS, map_output, read_graph_info
from onnxcam.runner.stages.explain import main_outputs
from runner_helpers import read_index, write_images, write_manifest

ALL = list(GRAPH_MAP_METHODS)


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net", saliency=True)[1].path


@pytest.fixture(scope="module")
def served(toy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serving") / "served.onnx"
    convert(toy, out, ALL, uint8=True)
    return out


def pictures(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *size, 3), np.uint8)


def test_maps_in_the_graph_equal_the_numpy_formulas(toy, served):
    info = read_graph_info(served)
    assert info.graph_maps == ALL and info.input_format == "uint8"
    pixels, targets = pictures(6, info.preprocessing.size), np.array([-1, 0, 1, 2, 3, -1])
    float_graph, served_graph = OnnxRuntimeBackend(toy, ["cpu"]), OnnxRuntimeBackend(served, ["cpu"])
    raw = float_graph.run(("logits", "activations", "gradients"), normalised(pixels, info.preprocessing), targets)
    maps = served_graph.run(("logits", *map(map_output, ALL)), pixels, targets)
    assert np.array_equal(maps["logits"], raw["logits"]), "the graph's normalisation is the runner's, bit for bit"
    for method in ALL:
        expected = METHODS[method](raw, METHODS[method].defaults)
        error = np.abs(maps[map_output(method)] - expected).max() / np.abs(expected).max()
        assert error <= 1e-5, f"{method}: {error:.1e}"
        assert maps[map_output(method)].shape == expected.shape == (6, *info.activation_shape[1:])


def test_float_inputs_go_through_the_graph_cut_at_its_float_input(toy, served):
    """Extra passes (perturbations, metrics) and impressions feed edited float inputs to a uint8 graph."""
    inputs = np.random.default_rng(1).standard_normal((3, 3, *read_graph_info(toy).preprocessing.size), np.float32)
    targets = np.array([0, 2, -1])
    expected = OnnxRuntimeBackend(toy, ["cpu"]).run(("logits", "plain_input_gradients"), inputs, targets)
    actual = OnnxRuntimeBackend(served, ["cpu"]).run(("logits", "plain_input_gradients"), inputs, targets)
    for name in expected:
        assert np.array_equal(actual[name], expected[name]), name


def test_the_main_pass_asks_for_maps_not_tensors_where_the_graph_serves_every_method():
    methods = {"gradcam": {"guided_weights": False}, "layercam": {}}
    assert main_outputs(methods, ALL) == ("logits", "map_gradcam", "map_layercam")
    assert main_outputs(methods, ["gradcam"]) == ("logits", "activations", "gradients", "map_gradcam")
    assert main_outputs({"gradcam": {"guided_weights": True}}, ALL) == ("logits", "activations", "gradients"), \
        "options other than the defaults run the NumPy formula"
    assert main_outputs({"gradcam": {"guided_weights": False}, "eigencam": {}}, ALL) == (
        "logits", "activations", "map_gradcam")


def test_a_run_on_the_served_graph_writes_what_the_float_graph_writes(toy, served, tmp_path, capsys):
    """Methods the graph serves, a NumPy one, a perturbation method and a model-run metric, over real pixels."""
    write_images(tmp_path / "images", 3, size=(90, 130))
    methods = ["gradcam", "layercam", "eigencam", "occlusion"]
    folders = {}
    for name, model in (("float", toy), ("served", served)):
        folder = tmp_path / name
        folder.mkdir()
        manifest = write_manifest(folder, model, tmp_path / "images", methods=methods, targets={"topk": 2},
                                  occlusion={"patch": 112, "stride": 56},
                                  evaluate={"metrics": ["average_drop"]})
        assert main(["run", str(manifest), "--quiet"]) == 0, capsys.readouterr().out
        folders[name] = folder / "out"
    assert load_manifest(tmp_path / "served" / "manifest.yaml").model == served
    rows = {name: {(r["image"], r["target_class"], r["method"]): r for r in read_index(out)}
            for name, out in folders.items()}
    assert rows["float"].keys() == rows["served"].keys() and len(rows["float"]) == 3 * 2 * len(methods)
    for key, row in rows["float"].items():
        other = rows["served"][key]
        for column in ("pred_class", "target_class", "peak_x", "peak_y"):
            assert row[column] == other[column], (key, column)
        for column in ("target_score", "average_drop"):
            assert float(other[column]) == pytest.approx(float(row[column]), rel=1e-4, abs=1e-6), (key, column)
        heatmaps = [np.load(out / rows[name][key]["heatmap_path"]).astype(np.float32) for name, out in folders.items()]
        assert np.abs(heatmaps[0] - heatmaps[1]).max() <= 1e-3, key  # float16 files: 1e-3 is their resolution


def test_convert_mistakes_are_one_line(toy, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    assert main(["convert", str(toy), "--out", str(out), "--maps", "gradcam,scorecam"]) == 2
    assert capsys.readouterr().out.strip() == ("onnxcam convert: error: --maps: scorecam cannot be computed in the "
                                               "graph; choose from gradcam, gradcam++, xgradcam, hirescam, layercam")
    assert main(["convert", str(toy), "--out", str(out)]) == 2
    assert "nothing to do" in capsys.readouterr().out
    assert main(["convert", str(toy), "--out", str(toy), "--uint8-input"]) == 2
    assert "is the input" in capsys.readouterr().out
    assert not out.exists()
    assert main(["convert", str(toy), "--out", str(out), "--maps", "layercam"]) == 0
    assert "every output within" in capsys.readouterr().out
    assert [o.name for o in onnx.load(str(out)).graph.output][-1] == "map_layercam"


def test_fixations_refuse_a_uint8_graph_in_one_line(served, tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    manifest = write_manifest(tmp_path, served, tmp_path / "images", methods=["fixations"])
    assert main(["run", str(manifest), "--quiet"]) == 2
    assert capsys.readouterr().out.strip().endswith("methods: 'fixations': needs a float-input graph; use the graph "
                                                    "as exported, without --uint8-input")


def test_openvino_refuses_a_uint8_graph_in_one_line(served):
    pytest.importorskip("openvino", reason="needs OpenVINO: pip install -e '.[openvino]'")
    from onnxcam.runner.model.backend import ModelError
    from onnxcam.runner.model.openvino_backend import OpenVinoBackend

    with pytest.raises(ModelError, match=r"takes uint8 pixels .*; OpenVINO runs the float-input graph: use the graph "
                                         "as exported$"):
        OpenVinoBackend(served)


def test_served_graph_on_cuda_matches_the_cpu(served):
    """Exercised on a GPU machine (uint8 pixels in, maps out, IO binding); skipped where CUDA cannot run."""
    cuda = OnnxRuntimeBackend(served, "auto", precision="f32")
    if cuda.provider != "CUDAExecutionProvider":
        pytest.skip("no usable CUDA provider here: " + "; ".join(cuda.notes))
    info = read_graph_info(served)
    pixels, targets = pictures(8, info.preprocessing.size, seed=2), np.array([-1, 0, 1, 2, 3, 4, -1, 2])
    outputs = ("logits", *map(map_output, ALL))
    expected = OnnxRuntimeBackend(served, ["cpu"]).run(outputs, pixels, targets)
    for name, value in cuda.run(outputs, pixels, targets).items():
        error = np.linalg.norm(value - expected[name]) / np.linalg.norm(expected[name])
        assert error <= 1e-4, f"{name}: {error:.1e}"
