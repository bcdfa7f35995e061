"""Target-layer discovery: what each module outputs, the layout of its output, and the `auto` choice.

A CAM method needs a map [N, C, h, w]. A convolutional layer gives one. A vision transformer's layer gives tokens
[N, prefix + h·w, C] (a class token, maybe register or distillation tokens, then one token per patch), and Swin's or
ConvNeXt's LayerNorm gives channels-last [N, h, w, C]; the explain graph turns both into [N, C, h, w] (see
`FeatureLayout`), the prefix tokens dropped, so every method works unchanged.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from onnxcam.exporter.errors import ExportError
from onnxcam.runner.size import Size
from torch import nn

MAX_PREFIX_TOKENS = 8  # a class token plus registers / a distillation token


@dataclass
class LayerInfo:
    name: str
    kind: str
    shape: tuple[int, ...] | None  # output shape of the module's last call, batch 1
    calls: int
    order: int  # position of the last call's completion in the forward pass
    grid: tuple[int, int] | None = None  # tokens: the patch grid (h, w) they stand for
    channels_last: bool = False  # a 4-D output [N, h, w, C] (see probe_layers)

    @property
    def layout(self) -> str:
        """nchw (a convolutional map), nhwc (channels last), tokens, or none."""
        if self.shape is not None and len(self.shape) == 4:
            return "nhwc" if self.channels_last else "nchw"
        if self.shape is not None and len(self.shape) == 3 and self.grid:
            return "tokens"
        return "none"

    @property
    def map_shape(self) -> tuple[int, int, int] | None:
        """(C, h, w) of the map the explain graph outputs for this layer."""
        if self.layout == "nchw":
            return self.shape[1], self.shape[2], self.shape[3]
        if self.layout == "nhwc":
            return self.shape[3], self.shape[1], self.shape[2]
        if self.layout == "tokens":
            return self.shape[2], *self.grid
        return None

    @property
    def prefix_tokens(self) -> int:
        return self.shape[1] - self.grid[0] * self.grid[1] if self.layout == "tokens" else 0

    @property
    def is_feature_map(self) -> bool:
        return self.map_shape is not None and self.map_shape[1] * self.map_shape[2] > 1


@dataclass
class Probe:
    layers: list[LayerInfo]  # every named module, in completion order
    logits_shape: tuple[int, ...]  # the model's own output, batch 1

    @property
    def task(self) -> str:
        """classification (logits [N, K]) or segmentation (logits per pixel, [N, K, H, W])."""
        return "segmentation" if len(self.logits_shape) == 4 else "classification"


def logits_of(output: object) -> torch.Tensor:
    """The logits ([N, K], or a segmenter's [N, K, H, W]) in what a model's forward returned: the tensor itself, the
    `logits` entry of a dict or the `logits` field of a named tuple (torchvision's Inception/GoogLeNet outputs,
    Hugging Face outputs), the `out` entry of torchvision's segmentation dict (not `aux`), or the only tensor of a
    tuple or dict; anything else is ambiguous and an ExportError."""
    if isinstance(output, torch.Tensor):
        return output
    named = (output.get("logits", output.get("out")) if isinstance(output, Mapping)
             else getattr(output, "logits", None))
    if isinstance(named, torch.Tensor):
        return named
    values = list(output.values()) if isinstance(output, Mapping) else list(output) if isinstance(
        output, tuple | list) else []
    tensors = [value for value in values if isinstance(value, torch.Tensor)]
    if len(values) == 1 and len(tensors) == 1:
        return tensors[0]
    what = f"a {type(output).__name__} of {len(values)} items" if values else f"a {type(output).__name__}"
    raise ExportError(f"the model returns {what}, not a logits tensor; make forward return the logits [N, classes] "
                      "(or a dict or named tuple with a 'logits' entry)")


def patch_size(model: nn.Module) -> int | None:
    """The stride of the patch embedding: the first convolution whose kernel equals its stride (> 1)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == module.stride and module.stride[0] > 1:
            return module.stride[0]
    return None


def token_grid(tokens: int, input_size: Size, patch: int | None, grid: Size | None) -> tuple[int, int] | None:
    """The (h, w) grid that `tokens` tokens stand for: `grid` if given, else the input size over the patch size,
    else the largest square; None when no grid leaves between 0 and MAX_PREFIX_TOKENS prefix tokens."""
    if grid:
        options = [grid]
    elif patch:
        options = [(input_size.height // patch, input_size.width // patch)]
    else:
        side = math.isqrt(tokens)
        options = [(side - k, side - k) for k in range(2)]
    for h, w in options:
        if h * w > 1 and 0 <= tokens - h * w <= MAX_PREFIX_TOKENS:
            return h, w
    return None


def probe_layers(model: nn.Module, input_size: Size, grid: Size | None = None) -> Probe:
    """Run one forward pass at batch 1 and record every named module's output, in completion order."""
    records: dict[str, LayerInfo] = {}
    counter = iter(range(1 << 30))

    def hook(name: str):
        def record(module, inputs, output):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            previous = records.get(name)
            records[name] = LayerInfo(name, type(module).__name__, shape,
                                      (previous.calls if previous else 0) + 1, next(counter))
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, 3, *input_size))
    except Exception as error:  # noqa: BLE001 - whatever the model's own checks raise
        detail = " ".join(str(error).split())[:160] or type(error).__name__
        raise ExportError(f"the model's forward fails on a {input_size.height}x{input_size.width} input ({detail}); "
                          "give the size it expects with --input-size") from None
    finally:
        for handle in handles:
            handle.remove()
    logits = logits_of(output)
    if logits.dim() not in (2, 4):
        raise ExportError(f"the model's output has shape {list(logits.shape)}; onnxcam needs logits [N, classes] (a "
                          "classifier) or [N, classes, H, W] (a segmenter): reshape them in forward")
    patch = patch_size(model)
    # A LayerNorm normalises the last dimension, so its 4-D output is channels-last, and so is every 4-D output
    # of that same shape (Swin's blocks and stages, ConvNeXt's permuted MLPs).
    channels_last = {info.shape for info in records.values() if info.kind == "LayerNorm" and len(info.shape or ()) == 4}
    for info in records.values():
        if info.shape is not None and len(info.shape) == 3:
            info.grid = token_grid(info.shape[1], input_size, patch, grid)
        info.channels_last = info.shape in channels_last
    return Probe(sorted(records.values(), key=lambda info: info.order), tuple(logits.shape))


def candidates(layers: list[LayerInfo]) -> list[LayerInfo]:
    return [info for info in layers if info.is_feature_map]


def _last_block_first_norm(layers: list[LayerInfo]) -> LayerInfo | None:
    """A transformer's last block's first norm (ViT's ln_1, Swin's norm1), as pytorch-grad-cam's tutorials pick:
    the last module holding two or more token (or channels-last) LayerNorms, and its first one. The last block's
    own output would not do: only the class token reaches a ViT's head, so the other tokens get no gradient."""
    norms = [info for info in layers if info.kind == "LayerNorm" and info.layout in ("tokens", "nhwc")]
    blocks: dict[str, list[LayerInfo]] = {}
    for info in norms:
        blocks.setdefault(info.name.rpartition(".")[0], []).append(info)
    blocks = {parent: children for parent, children in blocks.items() if len(children) >= 2}
    if not blocks:
        return None
    last = max(blocks.values(), key=lambda children: children[-1].order)
    return min(last, key=lambda info: info.order)


ENCODERS = ("backbone", "encoder")  # what torchvision's and segmentation-models-pytorch's segmenters call theirs


def auto_layer(layers: list[LayerInfo], task: str = "classification") -> LayerInfo:
    """A transformer's last block's first norm when its blocks come after the last convolution (ViT, Swin: only
    the patch embedding is one); otherwise the last 4-D feature map with spatial size > 1 before the head,
    skipping pooling layers. For a segmenter, the last map of its encoder (`backbone`, `encoder`), as
    pytorch-grad-cam's segmentation tutorial picks `backbone.layer4`: after it come the head and the upsampling,
    whose maps are the class scores themselves.

    Completion order puts a container after its children, so the block (`layer4`) wins
    over its last ReLU when they output the same tensor.
    """
    maps = [info for info in candidates(layers) if info.layout == "nchw" and "Pool" not in info.kind]
    encoder = [info for info in maps if info.name.split(".")[0] in ENCODERS]
    if task == "segmentation" and encoder:
        return encoder[-1]
    convolutions = [info.order for info in layers if "Conv" in info.kind and info.layout == "nchw"]
    norm = _last_block_first_norm(layers)
    if norm and norm.is_feature_map and norm.order > max(convolutions, default=-1):
        return norm
    if not maps:
        raise ExportError("--layer auto: the model has no 4-D feature map with spatial size > 1 and no transformer "
                          "blocks with a token grid; name a layer (see `onnxcam layers`), with --grid HxW for tokens")
    return maps[-1]


def resolve_layer(layers: list[LayerInfo], name: str, task: str = "classification") -> LayerInfo:
    """Find `name` (or `auto`); fail with one line listing the closest names."""
    if name == "auto":
        return auto_layer(layers, task)
    by_name = {info.name: info for info in layers}
    info = by_name.get(name)
    if info is None:
        close = difflib.get_close_matches(name, list(by_name), n=5, cutoff=0.4)
        hint = f"closest: {', '.join(close)}" if close else "run `onnxcam layers` for the list"
        raise ExportError(f"--layer {name}: no such module; {hint}")
    if info.shape is not None and len(info.shape) == 3 and not info.grid:
        raise ExportError(f"--layer {name}: output {list(info.shape)} looks like tokens but no patch grid leaves at "
                          f"most {MAX_PREFIX_TOKENS} prefix tokens; give the grid with --grid HxW")
    if not info.is_feature_map:
        shape = "no tensor output" if info.shape is None else f"output shape {list(info.shape)}"
        raise ExportError(f"--layer {name}: {shape} has no spatial extent; pick a layer with a map [C, h, w] (h*w > 1) "
                          "or tokens (see `onnxcam layers`)")
    return info
