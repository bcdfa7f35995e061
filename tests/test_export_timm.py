"""timm models (`--model timm:NAME`): three convolutional families and a ViT export with parity, with the
preprocessing of their pretrained_cfg (input size, mean, std, resize + centre crop, interpolation)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

pytestmark = pytest.mark.slow  # four exports of real architectures

from onnxcam.exporter.sources import load_model  # noqa: E402
from onnxcam.runner.model.backend import OnnxRuntimeBackend  # noqa: E402

CASES = {  # spec: (auto layer, layout, map [C, h, w], input size, crop fraction, interpolation, mean)
    "timm:resnet18d": ("layer4", "nchw", (512, 7, 7), (224, 224), 0.875, "bicubic", (0.485, 0.456, 0.406)),
    "timm:efficientnet_b0": ("bn2", "nchw", (1280, 7, 7), (224, 224), 0.875, "bicubic", (0.485, 0.456, 0.406)),
    "timm:convnext_atto": ("norm_pre", "nchw", (320, 7, 7), (224, 224), 0.875, "bicubic", (0.485, 0.456, 0.406)),
    "timm:vit_tiny_patch16_224": ("blocks.11.norm1", "tokens", (192, 14, 14), (224, 224), 0.9, "bicubic",
                                  (0.5, 0.5, 0.5)),
}


@pytest.mark.parametrize("spec", list(CASES))
def test_timm_models_export_with_their_recipe(spec, exported):
    layer, layout, shape, size, crop, interpolation, mean = CASES[spec]
    loaded, result = exported(spec)
    assert (result.layer.name, result.layer.layout, result.info.activation_shape) == (layer, layout, shape)
    pre = result.info.preprocessing
    assert (pre.size, pre.resize, pre.interpolation) == (size, "center_crop", interpolation)
    assert pre.crop_fraction == pytest.approx(crop) and pre.mean == pytest.approx(mean)
    assert result.info.num_classes == 1000 and result.info.labels[0] == "tench"
    assert all(figure["relative_error"] < 1e-3 for figure in result.info.parity.values()), result.info.parity
    batch = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    targets = np.array([-1, 3])
    graph = OnnxRuntimeBackend(result.path, ["cpu"]).run(("logits", "activations", "gradients"), batch, targets)
    for name, expected in autograd(loaded.model, layer, layout, shape, batch, targets).items():
        error = np.linalg.norm(graph[name] - expected) / np.linalg.norm(expected)
        assert error < 1e-3, f"{spec} {name}: relative error {error:.1e} against autograd"


def autograd(model: torch.nn.Module, layer: str, layout: str, shape: tuple[int, int, int], batch: np.ndarray,
             targets: np.ndarray) -> dict[str, np.ndarray]:
    """The logits, the layer's output and the gradient of the chosen logit (the top-1 where a target is -1) with
    respect to it, by PyTorch's autograd on the timm model; tokens [N, 1 + h w, C] (a class token first) as [N, C,
    h, w]."""
    model = copy.deepcopy(model).eval().requires_grad_(False)
    kept = {}
    hook = model.get_submodule(layer).register_forward_hook(lambda module, args, output: kept.update(a=output))
    try:
        logits = model(torch.from_numpy(batch).requires_grad_())  # so that the layer's output has a gradient
    finally:
        hook.remove()
    chosen = torch.where(torch.from_numpy(targets) < 0, logits.argmax(dim=1), torch.from_numpy(targets))
    (gradients,) = torch.autograd.grad(logits[torch.arange(len(batch)), chosen].sum(), kept["a"])
    channels, height, width = shape
    as_map = (lambda t: t[:, 1:, :].reshape(len(batch), height, width, channels).permute(0, 3, 1, 2)) \
        if layout == "tokens" else (lambda t: t)
    return {"logits": logits.detach().numpy(), "activations": as_map(kept["a"]).detach().numpy(),
            "gradients": as_map(gradients).numpy()}


def test_unknown_timm_name_suggests():
    from onnxcam.exporter.errors import ExportError

    with pytest.raises(ExportError, match=r"^unknown timm model 'resnet18x'; did you mean resnet18"):
        load_model("timm:resnet18x")
