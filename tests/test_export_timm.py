"""timm models (`--model timm:NAME`): three convolutional families and a ViT export with parity, with the
preprocessing of their pretrained_cfg (input size, mean, std, resize + centre crop, interpolation)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

pytestmark = pytest.mark.slow  # four exports of real architectures

from onnxcam.exporter.sources import load_model  # noqa: E402

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


def test_unknown_timm_name_suggests():
    from onnxcam.exporter.errors import ExportError

    with pytest.raises(ExportError, match=r"^unknown timm model 'resnet18x'; did you mean resnet18"):
        load_model("timm:resnet18x")
