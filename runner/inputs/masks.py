"""Ground-truth label images (`targets.masks`): an image's label image, found in the masks folder by its name, read
as class indices and brought into the model input's frame the way the image is (the same region, resized
nearest-neighbour, so no class is blended with its neighbour).

A label image is an indexed PNG whose indices are the classes (as VOC's SegmentationClass), or grey levels (8 or 16
bits; an RGB file whose three channels are equal counts as grey). It must have its image's size: a mask of another
size is refused (one line naming both sizes), not stretched, as it most likely belongs to another picture.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from onnxcam.runner.inputs.preprocess import model_region
from onnxcam.runner.model.graph import Preprocessing
from onnxcam.runner.size import Size

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")  # lossless formats, tried in this order


class MaskError(ValueError):
    """An image's label image is missing or unusable: its error row's one line."""


def mask_path(folder: Path, key: str) -> Path:
    """The label image of the image named `key` (its path below images.root): the same path below the masks folder,
    with a lossless extension."""
    stem = folder / Path(key).with_suffix("")
    for extension in MASK_EXTENSIONS:
        path = stem.with_name(stem.name + extension)
        if path.is_file():
            return path
    raise MaskError(f"targets.masks: no label image {stem}.png (or .bmp, .tif) for this image; add it, or leave the "
                    "image out")


def png_palette(data: bytes) -> np.ndarray | None:
    """An indexed PNG's palette [P, 3] (RGB), or None for a file that is not one (another format or colour type)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 33 or data[25] != 3:  # IHDR's colour type: 3
        return None
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if kind == b"PLTE":
            return np.frombuffer(data[position + 8:position + 8 + length], np.uint8).reshape(-1, 3)
        position += 12 + length
    return None


def read_label_image(path: Path) -> np.ndarray:
    """The class index of every pixel [h, w] (uint16). OpenCV expands an indexed PNG to its colours, so each colour
    is mapped back to its palette index (a palette that gives two indices one colour is refused as ambiguous)."""
    data = path.read_bytes()
    palette = png_palette(data)
    values = cv2.imdecode(np.frombuffer(data, np.uint8),
                          cv2.IMREAD_COLOR if palette is not None else cv2.IMREAD_UNCHANGED)
    if values is None:
        raise MaskError(f"targets.masks: {path}: cannot read it as an image; give a PNG of class indices")
    if palette is not None:
        return _palette_indices(values[..., ::-1], palette, path)
    if values.ndim == 3:
        if not (values[..., :3] == values[..., :1]).all():
            raise MaskError(f"targets.masks: {path}: a colour image; give an indexed PNG (palette) or grey levels "
                            "whose values are the classes")
        values = values[..., 0]
    return values.astype(np.uint16)


def _palette_indices(rgb: np.ndarray, palette: np.ndarray, path: Path) -> np.ndarray:
    codes = (rgb.astype(np.int64) << np.array([16, 8, 0])).sum(axis=2)
    table = (palette.astype(np.int64) << np.array([16, 8, 0])).sum(axis=1)
    used, inverse = np.unique(codes, return_inverse=True)
    indices = np.zeros(len(used), np.uint16)
    for k, code in enumerate(used):
        matches = np.flatnonzero(table == code)
        if len(matches) != 1:
            raise MaskError(f"targets.masks: {path}: its palette gives {len(matches) or 'no'} indices the colour "
                            f"#{int(code):06x}; save the classes as grey levels instead")
        indices[k] = matches[0]
    return indices[inverse.reshape(codes.shape)]


def label_in_model_frame(label: np.ndarray, size: Size, pre: Preprocessing, path: Path) -> np.ndarray:
    """The label image [H, W] as the model sees its image: the model's region of it, resized nearest-neighbour to
    the model input. `size`: the image's own size, which the label image must have."""
    if label.shape != tuple(size):
        raise MaskError(f"targets.masks: {path} is {label.shape[1]}x{label.shape[0]} and its image "
                        f"{size.width}x{size.height}; a label image must have its image's size")
    x0, y0, x1, y1 = model_region(size, pre)
    height, width = pre.size
    return cv2.resize(label[y0:y1, x0:x1], (width, height), interpolation=cv2.INTER_NEAREST)


def check_classes(label: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> None:
    """Every value of the label image is a class of the model or the ignore index."""
    values = np.unique(label)
    wrong = [int(v) for v in values if v >= num_classes and v != ignore_index]
    if wrong:
        raise MaskError(f"targets.masks: {path} holds class {wrong[0]}, out of range: the model has {num_classes} "
                        f"classes (0..{num_classes - 1}); fix the mask, or set targets.masks.ignore_index to "
                        f"{wrong[0]} if it marks unlabelled pixels")


@dataclass(frozen=True)
class LabelImages:
    """targets.masks as the read stage uses it: an image's label image in the model input's frame."""

    folder: Path
    num_classes: int
    ignore_index: int

    def read(self, key: str, size: Size, pre: Preprocessing) -> np.ndarray:
        path = mask_path(self.folder, key)
        label = read_label_image(path)
        check_classes(label, self.num_classes, self.ignore_index, path)
        return label_in_model_frame(label, size, pre, path)
