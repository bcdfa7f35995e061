"""`onnxcam filters`: a convolution's filters as a grid of small images (the first layer's Gabor-like edges and
colour blobs, as in Krizhevsky et al. 2012 and Zeiler & Fergus 2014), read from the explain graph's weights with
onnx and NumPy only.

The graph's forward convolutions are its `Conv` nodes (its backward ops are `ConvTranspose`), in the order the
forward pass runs them, each weight counted once. Graphs exported by this version name them after the PyTorch
module (metadata `convolutions`); otherwise they are `#1`, `#2`, ...
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import numpy_helper
from onnxcam.runner.model.forward import stored_tensors


class FiltersError(ValueError):
    """One line naming what is wrong and the fix."""


@dataclass
class Convolution:
    name: str  # the PyTorch module, or #k (k-th convolution of the forward pass)
    weight: np.ndarray  # [out, in / groups, kh, kw]
    stride: tuple[int, ...]
    groups: int

    def describe(self) -> str:
        return f"{self.name}  weight {list(self.weight.shape)}, stride {list(self.stride)}, groups {self.groups}"


def convolutions(path: Path) -> list[Convolution]:
    """Every forward convolution of the graph whose weight is stored in the file, in execution order."""
    try:
        model = onnx.load(str(path))  # with the weights (also from `<name>.data` beside a graph over 2 GB)
    except Exception as error:  # noqa: BLE001 - onnx raises several types for a file that is not a model
        raise FiltersError(f"{path}: not an ONNX file ({' '.join(str(error).split())[:120]})") from None
    props = {prop.key: prop.value for prop in model.metadata_props}
    names = json.loads(props.get("convolutions", "{}"))
    bgr = json.loads(props.get("preprocessing", "{}")).get("channel_order") == "BGR"
    stored = stored_tensors(model)
    found: dict[str, Convolution] = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in stored or node.input[1] in found:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(stored[node.input[1]]).astype(np.float32)
        if weight.ndim != 4:
            continue
        if bgr and weight.shape[1] == 3:
            weight = weight[:, ::-1]  # drawn as RGB
        found[node.input[1]] = Convolution(names.get(node.input[1], f"#{len(found) + 1}"), weight,
                                           tuple(attributes.get("strides", (1, 1))), int(attributes.get("group", 1)))
    return list(found.values())


def pick(layers: list[Convolution], name: str | None, path: Path) -> Convolution:
    if not layers:
        raise FiltersError(f"{path}: the graph has no convolution with stored weights")
    if name is None:
        return layers[0]
    for layer in layers:
        if name in (layer.name, f"#{layers.index(layer) + 1}"):
            return layer
    known = [layer.name for layer in layers]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"one of {known[0]} ... {known[-1]} (#1 ... #{len(known)})"
    raise FiltersError(f"--layer: no convolution '{name}' in {path}; {hint} (--list shows them all)")


def tiles(weight: np.ndarray) -> np.ndarray:
    """One image per filter, each min-max scaled on its own: RGB [out, kh, kw, 3] where the filter reads the 3
    input colours, else grey [out, kh, kw], the mean over the input channels it reads."""
    pictures = weight.transpose(0, 2, 3, 1) if weight.shape[1] == 3 else weight.mean(axis=1)
    axes = tuple(range(1, pictures.ndim))
    low = pictures.min(axis=axes, keepdims=True)
    span = pictures.max(axis=axes, keepdims=True) - low
    return (pictures - low) / np.where(span > 0, span, 1)


def grid(pictures: np.ndarray, tile: int, gap: int = 2) -> np.ndarray:
    """8-bit BGR grid, as square as it goes, of `pictures` enlarged (nearest) to `tile` pixels, on white."""
    count, columns = len(pictures), math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(count / columns)
    canvas = np.full((rows * (tile + gap) + gap, columns * (tile + gap) + gap, 3), 255, np.uint8)
    for k, picture in enumerate(pictures):
        picture = np.round(picture * 255).astype(np.uint8)
        picture = picture[:, :, ::-1] if picture.ndim == 3 else np.repeat(picture[:, :, None], 3, axis=2)
        big = cv2.resize(picture, (tile, tile), interpolation=cv2.INTER_NEAREST)
        y, x = gap + (k // columns) * (tile + gap), gap + (k % columns) * (tile + gap)
        canvas[y:y + tile, x:x + tile] = big
    return canvas


def write_filters(path: Path, out: Path, layer: str | None = None, tile: int = 32) -> Convolution:
    """Draw the chosen convolution's filters into `out` (any image format OpenCV writes)."""
    chosen = pick(convolutions(path), layer, path)
    picture = grid(tiles(chosen.weight), tile)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok, data = cv2.imencode(out.suffix or ".png", picture)
    except cv2.error:
        ok = False
    if not ok:
        raise FiltersError(f"--out {out}: OpenCV cannot write '{out.suffix}' files; use .png or .jpg")
    out.write_bytes(data.tobytes())
    return chosen
