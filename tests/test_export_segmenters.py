"""Segmenters export: torchvision's (dict output, the auxiliary head's checkpoint) and segmentation-models-pytorch's,
each graph checked against plain torch autograd of the tutorial's score, sum(out[t] * mask), written here without
the exporter's code; the target mask broadcasts."""

import copy

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # exports real segmenters

from onnxcam.exporter.errors import ExportError  # noqa: E402
from onnxcam.exporter.parity import relative_error  # noqa: E402
from onnxcam.exporter.sources import load_model  # noqa: E402
from onnxcam.runner.model.graph import PREDICTED_MASK, read_graph_info  # noqa: E402

SIZE = (64, 96)
TOLERANCE = 1e-4
# dS/dA goes back through the whole decoder (smp's Unet: ten convolutions, batch norms and ReLUs at full size), where
# float32 sums drift from float64's: 1.4e-4 measured on smp's Unet; held to the export gate's 1e-3.
GRADIENT_TOLERANCE = 1e-3
SEGMENTERS = {  # spec -> (what --layer auto must pick, number of classes)
    "torchvision:lraspp_mobilenet_v3_large": ("backbone.16", 21),
    "torchvision:deeplabv3_mobilenet_v3_large": ("backbone.16", 21),
    "smp:Unet:resnet18": ("encoder.layer4", 1),
    "smp:FPN:resnet18": ("encoder.layer4", 1),
    "smp:DeepLabV3Plus:resnet18": ("encoder.layer4", 1),
}


def _autograd(model, layer, x, targets, masks):
    """dS/dA for S = sum_n sum_yx out[n, t_n] * M_n, and each class's mean score over M_n, in float64."""
    model = copy.deepcopy(model).double()
    captured = []
    model.get_submodule(layer).register_forward_hook(lambda module, inputs, output: captured.append(output))
    output = model(torch.from_numpy(x).double().requires_grad_(True))  # frozen parameters: the input carries it
    output = output["out"] if isinstance(output, dict) else output
    masks = torch.from_numpy(masks).double()
    score = sum((output[n, t] * masks[n]).sum() for n, t in enumerate(targets))
    (gradients,) = torch.autograd.grad(score, captured[-1])
    means = (output * masks[:, None]).sum(dim=(2, 3)) / masks.sum(dim=(1, 2))[:, None]
    return gradients.numpy(), means.detach().numpy(), output.detach().numpy()


@pytest.mark.parametrize("spec", list(SEGMENTERS))
def test_segmenters_export_and_match_autograd(spec, exported):
    layer, classes = SEGMENTERS[spec]
    loaded, result = exported(spec, input_size=SIZE)
    assert result.layer.name == layer, "--layer auto picked another layer"
    info = read_graph_info(result.path)
    assert (info.task, info.num_classes, info.preprocessing.resize) == ("segmentation", classes, "stretch")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input", "target", "target_mask"]
    names = [o.name for o in session.get_outputs()]
    assert names[-2:] == ["class_share", "label_map"]
    x = np.random.default_rng(3).standard_normal((3, 3, *SIZE)).astype(np.float32)
    targets = np.array([0, classes - 1, 0], np.int64)

    def run(mask):
        return dict(zip(names, session.run(None, {"input": x, "target": targets, "target_mask": mask}), strict=True))

    predicted = run(PREDICTED_MASK)
    label_map = predicted["label_map"]
    _, _, scores = _autograd(loaded.model, layer, x, targets, np.ones((3, *SIZE)))
    # float32 and float64 may settle a pixel on a near-tie between two classes differently
    assert (label_map != scores.argmax(axis=1)).mean() <= 1e-3
    shares = np.stack([(label_map == k).mean(axis=(1, 2)) for k in range(classes)], axis=1)
    assert np.allclose(predicted["class_share"], shares, atol=1e-7)
    for masks in ((label_map == targets[:, None, None]).astype(np.float32),  # the prediction, spelt out
                  (np.random.default_rng(4).random((3, *SIZE)) < 0.3).astype(np.float32)):  # a given mask
        if not masks.any(axis=(1, 2)).all():
            masks[:, 0, 0] = 1  # a class the random weights predict nowhere: one pixel, so the mean exists
        gradients, means, _ = _autograd(loaded.model, layer, x, targets, masks)
        out = run(masks)
        assert relative_error(out["gradients"], gradients) <= GRADIENT_TOLERANCE
        assert relative_error(out["logits"], means) <= TOLERANCE
    spelt_out = run((label_map == targets[:, None, None]).astype(np.float32))
    assert relative_error(predicted["gradients"], spelt_out["gradients"]) <= 1e-6, "-1 is not the prediction"


def test_a_checkpoint_with_the_auxiliary_head_loads_and_the_graph_explains_out(tmp_path):
    import torchvision

    fcn = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    path = tmp_path / "fcn.pth"
    torch.save(fcn.state_dict(), path)
    loaded = load_model("torchvision:fcn_resnet50", path)
    assert loaded.model.aux_classifier is not None
    assert set(loaded.model(torch.zeros(1, 3, 64, 64))) == {"out", "aux"}
    assert loaded.labels[0] == "__background__" and len(loaded.labels) == 21
    assert loaded.model(torch.zeros(1, 3, 64, 64))["out"].shape == (1, 21, 64, 64)


@pytest.mark.parametrize("spec, message", [
    ("smp:Unett:resnet18", "expected smp:ARCH:ENCODER with ARCH one of"),
    ("smp:Unet", "expected smp:ARCH:ENCODER"),
    ("smp:Unet:resnet19", "unknown encoder 'resnet19'; did you mean"),
    ("torchvision:deeplabv3_resnet5", "did you mean deeplabv3_resnet50"),
])
def test_segmenter_spec_mistakes_are_one_line(spec, message):
    with pytest.raises(ExportError, match=message) as error:
        load_model(spec)
    assert "\n" not in str(error.value)


def test_a_segmenter_of_more_than_256_classes_is_one_line(tmp_path):
    from onnxcam.exporter.export import export_explain_graph
    from onnxcam.exporter.sources import LoadedModel
    from onnxcam.runner.size import Size

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 300, 1))
    with pytest.raises(ExportError, match="the segmenter has 300 classes; onnxcam's label map is uint8") as error:
        export_explain_graph(LoadedModel(model.eval(), "test:wide", Size(16, 16)), "auto", tmp_path / "w.onnx")
    assert "\n" not in str(error.value) and not (tmp_path / "w.onnx").exists()
