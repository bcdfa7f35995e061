"""Image -> model input, as the graph's metadata prescribes, and the region of the image the model saw."""

from __future__ import annotations

import cv2
import numpy as np
from onnxcam.runner.model.graph import Preprocessing
from onnxcam.runner.size import Size

UPSCALING = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in original pixels: the part of the image the model saw


def model_region(size: Size, pre: Preprocessing) -> Region:
    """The part of the image that fills the model input: all of it (stretch) or the centre crop.

    center_crop follows torchvision: resize the shorter side to size / crop_fraction, crop `size`.
    """
    height, width = size
    if pre.resize == "stretch":
        return 0, 0, width, height
    out_height, out_width = pre.size
    scale = min(out_height, out_width) / pre.crop_fraction / min(width, height)
    crop_width, crop_height = min(width, round(out_width / scale)), min(height, round(out_height / scale))
    x0, y0 = (width - crop_width) // 2, (height - crop_height) // 2
    return x0, y0, x0 + crop_width, y0 + crop_height


def normalised(pixels_bgr: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Resized pixels [..., H, W, 3] BGR uint8 -> the float input [..., 3, H, W]: the model's channel order,
    / 255, - mean, / std (as one multiply and one subtract, the arithmetic a uint8-input graph does too)."""
    if pre.channel_order == "RGB":
        pixels_bgr = pixels_bgr[..., ::-1]
    scale = np.float32(1 / 255) / np.asarray(pre.std, np.float32)
    shift = np.asarray(pre.mean, np.float32) / np.asarray(pre.std, np.float32)
    tensor = pixels_bgr.astype(np.float32) * scale - shift
    return np.ascontiguousarray(np.moveaxis(tensor, -1, -3))


def to_input(image_bgr: np.ndarray, pre: Preprocessing, uint8: bool = False) -> tuple[np.ndarray, Region]:
    """The model input and the region it covers: [3,H,W] float32, or with `uint8` the resized pixels [H,W,3] BGR
    that a uint8-input graph normalises itself. Downscaling uses area averaging (like an antialiased resize),
    upscaling the recipe's interpolation (bilinear or bicubic)."""
    region = model_region(Size(*image_bgr.shape[:2]), pre)
    x0, y0, x1, y1 = region
    seen = image_bgr[y0:y1, x0:x1]
    out_height, out_width = pre.size
    shrinking = out_width * out_height < seen.shape[0] * seen.shape[1]
    upscaling = UPSCALING.get(pre.interpolation, cv2.INTER_LINEAR)
    resized = cv2.resize(seen, (out_width, out_height), interpolation=cv2.INTER_AREA if shrinking else upscaling)
    return (np.ascontiguousarray(resized) if uint8 else normalised(resized, pre)), region
