"""The export-side CLI: what a user sees for good and bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from onnxcam.exporter.sources import load_model  # noqa: E402
from onnxcam.runner.cli import main  # noqa: E402
from onnxcam.runner.model.graph import read_graph_info  # noqa: E402

TESTS = Path(__file__).parent


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[-1].startswith(f"onnxcam {argv[0]}: error: ")
    return lines[-1]


def test_unknown_model_spec(capsys, tmp_path):
    line = one_line_error(capsys, ["export", "--model", "resnet50", "--out", str(tmp_path / "m.onnx")])
    assert "unknown model spec 'resnet50'" in line and "torchvision:NAME" in line


def test_unknown_torchvision_name_suggests(capsys, tmp_path):
    line = one_line_error(capsys, ["layers", "--model", "torchvision:resnet5"])
    assert "did you mean" in line and "resnet50" in line


@pytest.mark.parametrize("spec,expected", [
    ("no_such_package.models:build", "cannot import 'no_such_package.models'"),
    ("toy_models:missing", "has no callable 'missing'"),
    ("toy_models:not_a_module", "returned str, not a torch.nn.Module"),
])
def test_bad_factory_path(capsys, tmp_path, spec, expected):
    assert expected in one_line_error(capsys, ["export", "--model", spec, "--out", str(tmp_path / "m.onnx")])


def test_weights_with_mismatched_keys_name_a_few(capsys, tmp_path):
    state = torch.nn.Linear(3, 2).state_dict() | {"head.extra": torch.zeros(1)}
    torch.save(state, tmp_path / "w.pth")
    line = one_line_error(capsys, ["export", "--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pth"),
                                   "--out", str(tmp_path / "m.onnx")])
    assert "missing (conv1.weight, bn1.weight, bn1.bias, ...)" in line
    assert "2 unexpected" not in line and "3 unexpected (weight, bias, head.extra)" in line


def test_weights_of_another_head_size_hint_num_classes(capsys, tmp_path):
    torch.save(__import__("torchvision").models.resnet18(num_classes=10).state_dict(), tmp_path / "w.pth")
    line = one_line_error(capsys, ["export", "--model", "torchvision:resnet18", "--weights", str(tmp_path / "w.pth"),
                                   "--out", str(tmp_path / "m.onnx")])
    assert "fc.weight [10, 512] vs [1000, 512]" in line and "--num-classes" in line


def test_unknown_layer_lists_closest(capsys, tmp_path):
    line = one_line_error(capsys, ["export", "--model", "torchvision:resnet18", "--layer", "layer5",
                                   "--out", str(tmp_path / "m.onnx")])
    assert "--layer layer5: no such module; closest:" in line and "layer4" in line


def test_layer_without_spatial_output(capsys, tmp_path):
    line = one_line_error(capsys, ["export", "--model", "torchvision:resnet18", "--layer", "avgpool",
                                   "--out", str(tmp_path / "m.onnx")])
    assert "--layer avgpool: output shape [1, 512, 1, 1] has no spatial extent" in line
    line = one_line_error(capsys, ["export", "--model", "toy_models:mlp", "--out", str(tmp_path / "m.onnx")])
    assert "no 4-D feature map" in line


def test_unexportable_op_is_named(capsys, tmp_path):
    line = one_line_error(capsys, ["export", "--model", "toy_models:custom_op_net", "--layer", "conv",
                                   "--out", str(tmp_path / "m.onnx")])
    assert "onnxcam_test" in line and "wobble" in line, line
    assert not (tmp_path / "m.onnx").exists()


def test_parity_failure_refuses_to_write(capsys, tmp_path):
    line = one_line_error(capsys, ["export", "--model", "toy_models:noisy_net", "--layer", "conv",
                                   "--out", str(tmp_path / "m.onnx")])
    assert "parity check failed" in line and "> 1e-03" in line
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.iterdir())


def test_layers_lists_candidates_and_auto(capsys):
    assert main(["layers", "--model", "torchvision:resnet18"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1.conv2" in out and "[512, 7, 7]" in out
    assert "* = --layer auto (layer4)" in out
    assert "avgpool" not in out and "fc" not in out


def test_export_cli_writes_self_describing_graph(capsys, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing {i}" for i in range(5)))
    out = tmp_path / "toy.onnx"
    code = main(["export", "--model", "toy_models:relu_net", "--out", str(out), "--input-size", "64x48",
                 "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--labels", str(labels), "--multilabel",
                 "--no-guided", "--saliency"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "target layer: 4 (ReLU, output [16, 32, 24]) [auto]" in printed
    assert "parity vs PyTorch" in printed and "wrote" in printed
    info = read_graph_info(out)
    assert info.preprocessing.size == (64, 48) and info.preprocessing.mean == (0.5, 0.5, 0.5)
    assert info.labels == [f"thing {i}" for i in range(5)]
    outputs = ["logits", "activations", "gradients", "plain_input_gradients"]
    assert info.output_activation == "sigmoid" and info.outputs == outputs
    assert info.gap_linear_head is True and info.target_layer == "4"
    assert info.parity["gradients"]["relative_error"] < 1e-5
    assert info.versions["torch"] == torch.__version__
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == outputs
    x, target = torch.randn(3, 3, 64, 48, generator=torch.Generator().manual_seed(2)), torch.tensor([1, -1, 4])
    plain = session.run(["plain_input_gradients"], {"input": x.numpy(), "target": target.numpy()})[0]
    model = load_model("toy_models:relu_net").model
    logits = model(x.requires_grad_(True))
    chosen = torch.where(target < 0, logits.argmax(dim=1), target)
    expected = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), x)[0].numpy()
    np.testing.assert_allclose(plain, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "target layer     4 -> activations [16, 32, 24]" in shown
    assert "input            input            [batch, 3, 64, 48] float" in shown
    assert "parity           gradients" in shown and "sigmoid" in shown


@pytest.mark.slow
def test_gap_linear_flag(exported):
    assert exported("torchvision:resnet18")[1].info.gap_linear_head is True
    assert exported("torchvision:vgg11")[1].info.gap_linear_head is False
    assert exported("efficientnet-lite0")[1].info.gap_linear_head is True


def test_guided_backprop_matches_captum(exported):
    captum = pytest.importorskip("captum.attr")
    loaded, result = exported("toy_models:relu_net")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([0, 1, 2, 4])
    ours = session.run(["input_gradients"], {"input": x.numpy(), "target": target.numpy()})[0]
    theirs = captum.GuidedBackprop(loaded.model).attribute(x, target=target).detach().numpy()
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
    plain = torch.autograd.grad(loaded.model(x.requires_grad_(True)).gather(1, target[:, None]).sum(), x)[0]
    assert np.abs(ours - plain.numpy()).max() > 0.1 * np.abs(theirs).max(), "guided must differ from plain"


def test_cli_process_exit_code_and_single_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "onnxcam.runner.cli", "export", "--model", "torchvision:nope",
                             "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stdout.strip().count("\n") == 0 and result.stderr == ""
    assert "unknown torchvision classification or segmentation model 'nope'" in result.stdout


@pytest.mark.parametrize("spec", ["toy_models:returns_dict", "toy_models:returns_named_tuple"])
def test_logits_are_picked_from_a_dict_or_named_tuple(spec, exported):
    _, result = exported(spec)
    assert result.info.num_classes == 5 and result.info.parity["logits"]["relative_error"] < 1e-5


def test_a_tuple_of_outputs_is_one_line_naming_the_fix(capsys, tmp_path):
    line = one_line_error(capsys, ["export", "--model", "toy_models:returns_tuple", "--out", str(tmp_path / "m.onnx")])
    assert line.endswith("the model returns a tuple of 2 items, not a logits tensor; make forward return the logits "
                         "[N, classes] (or a dict or named tuple with a 'logits' entry)")


def test_a_forward_that_refuses_the_input_size_is_one_line(capsys, tmp_path):
    line = one_line_error(capsys, ["export", "--model", "torchvision:vit_b_16", "--input-size", "256",
                                   "--out", str(tmp_path / "m.onnx")])
    assert "the model's forward fails on a 256x256 input (Wrong image height! Expected 224 but got 256!)" in line
    assert line.endswith("give the size it expects with --input-size")


def test_an_export_prints_only_its_own_lines(tmp_path):
    result = subprocess.run([sys.executable, "-m", "onnxcam.runner.cli", "export", "--model", "toy_models:relu_net",
                             "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=300,
                            cwd=TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", "no stray warning from torch or ONNX Runtime"
    assert [line.split(" ")[0] for line in result.stdout.splitlines()] == ["exporting", "target", "parity", "wrote"]


@pytest.mark.slow
def test_squeezenet_class_count_is_the_model_output(exported):
    """SqueezeNet's last named module outputs [1, 1000, 1, 1]; the class count comes from the model's output."""
    loaded, result = exported("torchvision:squeezenet1_1")
    assert result.info.num_classes == 1000 and result.info.labels == loaded.labels


@pytest.mark.slow
def test_bundled_model_is_pretrained(exported):
    import skimage.data

    loaded, result = exported("efficientnet-lite0")
    import cv2

    image = cv2.resize(skimage.data.chelsea(), loaded.input_size[::-1], interpolation=cv2.INTER_AREA) / 255.0
    x = ((image - loaded.mean) / loaded.std).transpose(2, 0, 1)[None].astype(np.float32)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x, "target": np.array([-1])})[0][0]
    top5 = [loaded.labels[i] for i in np.argsort(logits)[::-1][:5]]
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(top5), top5


def test_parity_gate_allows_input_gradient_kinks_only():
    from onnxcam.exporter.export import _parity_problem

    def figure(error, cos=1.0):
        return {"relative_error": error, "max_error": error, "cosine": cos}

    assert _parity_problem("plain_input_gradients", figure(3.9e-3, 0.999993), 1e-3) == ""
    assert _parity_problem("input_gradients", figure(5e-3), 1e-3) == ""
    assert "limit 1e-02" in _parity_problem("input_gradients", figure(2e-2), 1e-3)
    assert "cosine 0.999000" in _parity_problem("plain_input_gradients", figure(1e-4, 0.999), 1e-3)
    assert _parity_problem("gradients", figure(2e-3), 1e-3) == "relative error 2.00e-03 > 1e-03"
    assert _parity_problem("logits", figure(1e-4), 1e-3) == ""


def test_a_graph_over_the_protobuf_limit_keeps_its_weights_beside_it(monkeypatch, tmp_path):
    """Weights over EXTERNAL_DATA_BYTES (vit_h_14: 2.5 GB, more than one protobuf holds) go to `<graph>.data`; the
    runner finds them from any working directory; a later, smaller export of the same path drops the side file."""
    from onnxcam.exporter import export, write
    from onnxcam.runner.model.backend import OnnxRuntimeBackend

    loaded = load_model("toy_models:relu_net")
    inline = export.export_explain_graph(loaded, "auto", tmp_path / "inline.onnx", log=lambda _: None)
    monkeypatch.setattr(write, "EXTERNAL_DATA_BYTES", 0)
    out = tmp_path / "graphs" / "m.onnx"
    result = export.export_explain_graph(loaded, "auto", out, log=lambda _: None)
    data = out.with_name("m.onnx.data")
    assert sorted(path.name for path in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"], "no staging left"
    initializers = onnx.load(str(out), load_external_data=False).graph.initializer
    outside = sum(int(dict((e.key, e.value) for e in t.external_data)["length"]) for t in initializers
                  if t.data_location == onnx.TensorProto.EXTERNAL)
    assert outside == data.stat().st_size > 4000, "the weights are in the side file, not the graph"
    assert read_graph_info(out).parity == result.info.parity

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    x = np.random.default_rng(0).standard_normal((3, 3, *loaded.input_size)).astype(np.float32)
    outputs = ("logits", "activations", "gradients")
    side, whole = (OnnxRuntimeBackend(path, ["cpu"]).run(outputs, x, np.full(3, -1)) for path in (out, inline.path))
    for name in outputs:
        np.testing.assert_array_equal(side[name], whole[name])

    monkeypatch.setattr(write, "EXTERNAL_DATA_BYTES", 1 << 30)
    export.export_explain_graph(loaded, "auto", out, log=lambda _: None)
    assert sorted(path.name for path in out.parent.iterdir()) == ["m.onnx"]


def test_torchvision_vits_are_built_for_their_recipes_size(monkeypatch):
    """vit_h_14's weights are for 518x518; torchvision builds the model for that size only when it loads them, so
    onnxcam asks for it (building the 632M-parameter model itself is left to `make zoo`)."""
    import torchvision

    built = {}

    def get_model(name, weights=None, **kwargs):
        built[name] = kwargs
        return torch.nn.Identity()

    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    assert load_model("torchvision:vit_h_14").input_size == (518, 518) and built["vit_h_14"] == {"image_size": 518}
    assert load_model("torchvision:vit_b_16").input_size == (224, 224) and built["vit_b_16"] == {"image_size": 224}
    load_model("torchvision:swin_v2_t")
    assert built["swin_v2_t"] == {}, "other families take no image_size"
