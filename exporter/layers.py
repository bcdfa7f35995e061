"""Target-layer discovery: what each module outputs, and the `auto` choice."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from onnxcam.exporter.errors import ExportError
from torch import nn


@dataclass
class LayerInfo:
    name: str
    kind: str
    shape: tuple[int, ...] | None  # output shape of the module's last call, batch 1
    calls: int
    order: int  # position of the last call's completion in the forward pass

    @property
    def is_feature_map(self) -> bool:
        return self.shape is not None and len(self.shape) == 4 and self.shape[2] * self.shape[3] > 1


def probe_layers(model: nn.Module, input_size: tuple[int, int]) -> list[LayerInfo]:
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
            model(torch.zeros(1, 3, *input_size))
    finally:
        for handle in handles:
            handle.remove()
    return sorted(records.values(), key=lambda info: info.order)


def candidates(layers: list[LayerInfo]) -> list[LayerInfo]:
    return [info for info in layers if info.is_feature_map]


def auto_layer(layers: list[LayerInfo]) -> LayerInfo:
    """The last 4-D feature map with spatial size > 1 before the head, skipping pooling layers.

    Completion order puts a container after its children, so the block (`layer4`) wins
    over its last ReLU when they output the same tensor.
    """
    maps = [info for info in candidates(layers) if "Pool" not in info.kind]
    if not maps:
        raise ExportError("--layer auto: the model has no 4-D feature map with spatial size > 1; name a layer")
    return maps[-1]


def resolve_layer(layers: list[LayerInfo], name: str) -> LayerInfo:
    """Find `name` (or `auto`); fail with one line listing the closest names."""
    if name == "auto":
        return auto_layer(layers)
    by_name = {info.name: info for info in layers}
    info = by_name.get(name)
    if info is None:
        close = difflib.get_close_matches(name, list(by_name), n=5, cutoff=0.4)
        hint = f"closest: {', '.join(close)}" if close else "run `onnxcam layers` for the list"
        raise ExportError(f"--layer {name}: no such module; {hint}")
    if not info.is_feature_map:
        shape = "no tensor output" if info.shape is None else f"output shape {list(info.shape)}"
        raise ExportError(f"--layer {name}: {shape} has no spatial extent; pick a 4-D layer with h*w > 1 "
                          "(see `onnxcam layers`)")
    return info
