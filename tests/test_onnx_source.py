"""`--model onnx:MODEL.onnx`: a plain ONNX classifier made into an explain graph without torch, held to the PyTorch
exporter's graph of the same weights (`onnxcam export`), and served by the runner as any explain graph."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from ci_models import ZOO  # noqa: E402
from onnxcam.exporter.onnx_source import export_plain_model, load_plain_model  # noqa: E402
from onnxcam.exporter.parity import (  # noqa: E402
    INPUT_GRADIENT_COSINE,
    INPUT_GRADIENT_FACTOR,
    cosine,
    relative_error,
)
from onnxcam.runner.cli import main  # noqa: E402
from onnxcam.runner.model.graph import OUTPUTS, Preprocessing, read_graph_info  # noqa: E402
from runner_helpers import read_index, write_images, write_manifest  # noqa: E402

TOLERANCE, GUIDED_TOLERANCE = 1e-4, 1e-3  # norm-wise relative error, the export's parity gate's measure
IMAGENET = Preprocessing(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def plain_export(model, size, path: Path, exporter: str = "torchscript", nhwc: bool = False) -> Path:
    """`torch.onnx.export` of the model as a user would write it: the TorchScript exporter (what most zoo files
    were made with) or the dynamo one, dynamic batch, opset 18."""
    example = torch.zeros(1, *((*size, 3) if nhwc else (3, *size)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=18, input_names=["images"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=18, input_names=["images"],
                              output_names=["scores"], dynamic_axes={"images": {0: "n"}, "scores": {0: "n"}})
    return path


def run(path: Path, x: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x, "target": target}), strict=True))


def assert_same_outputs(actual: dict, expected: dict, names=OUTPUTS[:4], what: str = "") -> None:
    for name in names:
        error = relative_error(actual[name], expected[name])
        limit = GUIDED_TOLERANCE if name.endswith("input_gradients") else TOLERANCE
        assert error <= limit, f"{what}: {name} differs by {error:.2e} (norm-wise)"


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(ZOO))
def test_a_plain_export_explains_as_the_torch_export(spec, exported, tmp_path):
    """Both sources asked for the same module: the ONNX source finds it through the exporter's node names (its last
    output inside that module)."""
    loaded, result = exported(spec)
    model = loaded.model.eval()
    plain = load_plain_model(f"onnx:{plain_export(model, loaded.input_size, tmp_path / 'plain.onnx')}")
    out = tmp_path / "explain.onnx"
    pre = Preprocessing(size=loaded.input_size, mean=loaded.mean, std=loaded.std)
    info = export_plain_model(plain, ZOO[spec], out, pre, loaded.labels, log=lambda _: None)
    assert info.activation_shape == read_graph_info(result.path).activation_shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, *loaded.input_size)).astype(np.float32)
    target = np.array([-1, 7, 999 % info.num_classes], np.int64)
    assert_same_outputs(run(out, x, target), run(result.path, x, target), what=spec)


@pytest.mark.slow
def test_the_dynamo_exporters_file_too(exported, tmp_path):
    """torch.onnx's dynamo exporter writes other ops (ReduceMean for the pooling, Conv with BatchNorm folded) and
    names nodes by module scope; its file explains as the TorchScript one does."""
    loaded, result = exported("torchvision:resnet18")
    path = plain_export(loaded.model.eval(), loaded.input_size, tmp_path / "plain.onnx", exporter="dynamo")
    out = tmp_path / "explain.onnx"
    pre = Preprocessing(size=loaded.input_size, mean=loaded.mean, std=loaded.std)
    export_plain_model(load_plain_model(f"onnx:{path}"), "layer4", out, pre, loaded.labels, saliency=True,
                       log=lambda _: None)
    x = np.random.default_rng(2).standard_normal((2, 3, *loaded.input_size)).astype(np.float32)
    target = np.array([-1, 3], np.int64)
    actual = run(out, x, target)
    assert_same_outputs(actual, run(result.path, x, target), what="dynamo resnet18")
    reference = torch.func.grad(lambda t: loaded.model(t)[torch.arange(2), torch.as_tensor(
        [int(actual["logits"][0].argmax()), 3])].sum())(torch.as_tensor(x))
    # back to the input, BatchNorm folded into the convolutions moves a few ReLU near-ties (6.4e-4 norm-wise): the
    # export gate's input-gradient bounds
    assert relative_error(actual["plain_input_gradients"], reference.numpy()) <= INPUT_GRADIENT_FACTOR * TOLERANCE
    assert cosine(actual["plain_input_gradients"], reference.numpy()) >= INPUT_GRADIENT_COSINE


class ChannelsLast(torch.nn.Module):
    """A Keras-style model: NHWC input, softmax at the end."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(self.inner(x.permute(0, 3, 1, 2)), dim=1)


@pytest.fixture(scope="module")
def toy(exported, tmp_path_factory):
    """toy_models:relu_net exported by onnxcam, and its plain NHWC + softmax file made into an explain graph."""
    loaded, result = exported("toy_models:relu_net", saliency=True)
    folder = tmp_path_factory.mktemp("toy")
    path = plain_export(ChannelsLast(loaded.model.eval()), loaded.input_size, folder / "nhwc.onnx", nhwc=True)
    out = folder / "explain.onnx"
    lines = []
    pre = Preprocessing(size=loaded.input_size, mean=loaded.mean, std=loaded.std)
    export_plain_model(load_plain_model(f"onnx:{path}"), "auto", out, pre, [], saliency=True, log=lines.append)
    return loaded, result, path, out, lines


def test_a_channels_last_model_with_softmax_explains_its_logits(toy):
    loaded, result, _, out, lines = toy
    assert any("the input of the model's final softmax" in line for line in lines), lines
    x = np.random.default_rng(3).standard_normal((4, 3, *loaded.input_size)).astype(np.float32)
    target = np.array([-1, 0, 4, -1], np.int64)
    actual = run(out, x, target)
    assert_same_outputs(actual, run(result.path, x, target), names=OUTPUTS, what="NHWC toy")
    chosen = torch.as_tensor(np.where(target < 0, actual["logits"].argmax(axis=1), target))
    model = loaded.model.double()
    try:
        expected = torch.func.grad(lambda t: model(t)[torch.arange(4), chosen].sum())(
            torch.as_tensor(x, dtype=torch.float64)).numpy()
    finally:
        model.float()
    assert relative_error(actual["plain_input_gradients"], expected) <= 1e-5
    info = read_graph_info(out)
    assert info.output_activation == "softmax" and info.gap_linear_head
    assert set(info.parity) == {"logits", "activations", "gradients"}
    assert info.parity["gradients"]["relative_error"] <= 1e-2 and info.parity["logits"]["relative_error"] <= 1e-6


def test_the_runner_serves_it_as_the_torch_export(toy, tmp_path):
    """Every method, from one manifest: the same rows (classes, scores) and the same maps as the torch export's."""
    from onnxcam.runner.methods import METHODS

    _, result, _, out, _ = toy
    images = tmp_path / "images"
    write_images(images, 3)
    options = {"activations": {"top": 2}, "occlusion": {"patch": 64, "stride": 64},
               "patches": {"patch": 64, "stride": 64}, "smoothgrad": {"samples": 4}}
    methods = [{name: options[name]} if name in options else name for name in METHODS]
    rows = {}
    for name, graph in (("torch", result.path), ("onnx", out)):
        (tmp_path / name).mkdir()
        manifest = write_manifest(tmp_path / name, graph, images, methods=methods)
        assert main(["run", str(manifest)]) == 0
        rows[name] = read_index(tmp_path / name / "out")
    assert len(rows["onnx"]) == len(rows["torch"]) >= 3 * len(methods)
    key = lambda row: (row["image"], row["method"])  # noqa: E731
    for mine, theirs in zip(sorted(rows["onnx"], key=key), sorted(rows["torch"], key=key), strict=True):
        assert (mine["status"], mine["pred_class"], mine["target_class"], mine["channel"], mine["peak_x"],
                mine["peak_y"]) == (theirs["status"], theirs["pred_class"], theirs["target_class"], theirs["channel"],
                                    theirs["peak_x"], theirs["peak_y"]), mine
        assert abs(float(mine["target_score"]) - float(theirs["target_score"])) <= 1e-5


def test_layers_lists_the_tensors_with_auto_marked(toy, capsys):
    _, _, path, _, _ = toy
    assert main(["layers", "--model", f"onnx:{path}"]) == 0
    text = capsys.readouterr().out
    assert "input NHWC [224, 224], 5 classes" in text, text
    marked = [line for line in text.splitlines() if line.startswith("* /")]
    assert len(marked) == 1 and "Relu" in marked[0], text


def one_line_error(capsys, argv) -> str:
    """The error is one line, the last (after the progress lines), as tests/test_export_cli.py holds it."""
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[-1].startswith(f"onnxcam {argv[0]}: error: "), lines
    return lines[-1]


def test_the_cli_exports_with_keras_style_scaling(toy, tmp_path, capsys):
    _, _, path, _, _ = toy
    out = tmp_path / "cli.onnx"
    assert main(["export", "--model", f"onnx:{path}", "--preprocess", "keras-tf", "--out", str(out),
                 "--no-guided"]) == 0
    info = read_graph_info(out)
    assert info.preprocessing.mean == (0.5, 0.5, 0.5) and info.preprocessing.std == (0.5, 0.5, 0.5)
    assert info.preprocessing.channel_order == "RGB" and info.outputs == ["logits", "activations", "gradients"]
    assert main(["export", "--model", f"onnx:{path}", "--preprocess", "keras-caffe", "--out", str(out)]) == 0
    pre = read_graph_info(out).preprocessing
    assert pre.channel_order == "BGR" and pre.std == (1 / 255,) * 3
    np.testing.assert_allclose(np.array(pre.mean) * 255, [103.939, 116.779, 123.68])
    assert info.model == f"onnx:{path}"


@pytest.mark.parametrize("extra, expected", [
    ([], "give the preprocessing the model was trained with"),
    (["--mean", "0,0,0"], "give the preprocessing the model was trained with"),
    (["--preprocess", "unit", "--mean", "0,0,0"], "either --preprocess or --mean/--std"),
    (["--preprocess", "unit", "--weights", "w.pt"], "--weights: "),
    (["--preprocess", "unit", "--layer", "nonsense"], "--layer nonsense: no feature map of that name"),
])
def test_user_errors_are_one_line(toy, tmp_path, capsys, extra, expected):
    _, _, path, _, _ = toy
    line = one_line_error(capsys, ["export", "--model", f"onnx:{path}", "--out", str(tmp_path / "x.onnx"), *extra])
    assert expected in line, line
    assert not (tmp_path / "x.onnx").exists()


def test_a_file_that_is_not_a_plain_model_is_one_line(toy, tmp_path, capsys):
    _, result, _, _, _ = toy
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    for model, expected in ((garbage, "not an ONNX model"), (result.path, "already an onnxcam explain graph"),
                            (tmp_path / "missing.onnx", "no such file")):
        line = one_line_error(capsys, ["layers", "--model", f"onnx:{model}"])
        assert expected in line, line


class CumulativeStem(torch.nn.Module):
    """relu_net with an op the gradient builder has no rule for (CumSum) after its first ReLU."""

    def __init__(self, inner):
        super().__init__()
        self.stem, self.rest = inner[:2], inner[2:]

    def forward(self, x):
        return self.rest(torch.cumsum(self.stem(x), dim=1))


def test_an_op_without_a_gradient_names_itself_and_where_gradcam_still_works(exported, tmp_path, capsys):
    """The guided pass goes back to the input through CumSum: one line names it and the layer after it; Grad-CAM from
    there without the guided pass exports."""
    loaded, _ = exported("toy_models:relu_net")
    path = plain_export(CumulativeStem(loaded.model.eval()), loaded.input_size, tmp_path / "cumsum.onnx")
    argv = ["export", "--model", f"onnx:{path}", "--preprocess", "unit", "--out", str(tmp_path / "x.onnx")]
    line = one_line_error(capsys, argv)
    assert "CumSum" in line and "Grad-CAM still works from --layer" in line and "with --no-guided" in line, line
    assert main([*argv, "--no-guided"]) == 0


def test_a_batch_fixed_at_one_in_the_file_still_runs_batches(exported, tmp_path):
    loaded, result = exported("toy_models:relu_net")
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(loaded.model.eval(), (torch.zeros(1, 3, *loaded.input_size),), str(path), dynamo=False,
                          opset_version=18)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    out = tmp_path / "explain.onnx"
    pre = Preprocessing(size=loaded.input_size, mean=loaded.mean, std=loaded.std)
    export_plain_model(load_plain_model(f"onnx:{path}"), "auto", out, pre, [], log=lambda _: None)
    x = np.random.default_rng(4).standard_normal((5, 3, *loaded.input_size)).astype(np.float32)
    target = np.full(5, -1, np.int64)
    assert_same_outputs(run(out, x, target), run(result.path, x, target), what="fixed batch")
    assert cosine(run(out, x, target)["gradients"], run(result.path, x, target)["gradients"]) > 0.99999


def test_filters_and_the_serving_options_take_it(toy, tmp_path, capsys):
    """`onnxcam filters` names the convolutions by layer; `onnxcam convert` adds maps in the graph and uint8 input to
    it (convert checks every output against the original graph itself)."""
    _, _, _, out, _ = toy
    assert main(["filters", str(out), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in listed] == ["inner.0", "inner.3"], listed
    served = tmp_path / "served.onnx"
    assert main(["convert", str(out), "--out", str(served), "--maps", "gradcam,layercam", "--uint8-input"]) == 0
    info = read_graph_info(served)
    assert info.graph_maps == ["gradcam", "layercam"] and info.input_format == "uint8"


class SwappedHalves(torch.nn.Module):
    """relu_net with ShuffleNet's channel split after its first ReLU: the TorchScript exporter computes the Slice
    bounds from the tensor's shape at run time."""

    def __init__(self, inner):
        super().__init__()
        self.stem, self.rest = inner[:2], inner[2:]

    def forward(self, x):
        first, second = self.stem(x).chunk(2, dim=1)
        return self.rest(torch.cat((second, first), dim=1))


def test_slice_bounds_computed_from_shapes_are_folded(exported, tmp_path):
    loaded, _ = exported("toy_models:relu_net")
    model = SwappedHalves(loaded.model.eval())
    path = plain_export(model, loaded.input_size, tmp_path / "halves.onnx")
    assert any(node.op_type == "Slice" and not set(node.input[1:3]) & {i.name for i in onnx.load(str(path)).graph.
                                                                        initializer}
               for node in onnx.load(str(path)).graph.node), "the file's Slice bounds are computed"
    out = tmp_path / "explain.onnx"
    pre = Preprocessing(size=loaded.input_size, mean=loaded.mean, std=loaded.std)
    export_plain_model(load_plain_model(f"onnx:{path}"), "auto", out, pre, [], saliency=True, log=lambda _: None)
    x = np.random.default_rng(5).standard_normal((2, 3, *loaded.input_size)).astype(np.float32)
    actual = run(out, x, np.array([-1, 2], np.int64))
    chosen = torch.as_tensor(np.where([True, False], actual["logits"].argmax(axis=1), 2))
    expected = torch.func.grad(lambda t: model(t)[torch.arange(2), chosen].sum())(torch.as_tensor(x))
    assert relative_error(actual["plain_input_gradients"], expected.numpy()) <= 1e-5
