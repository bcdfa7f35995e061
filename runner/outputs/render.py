"""Maps -> heatmaps at the size they are drawn (the image's, or scaled to fit output.overlays.max_side) or at the
method's own resolution (compact), their peaks in the image's pixels, and overlays on the photograph."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
from onnxcam.runner.config import COLORMAPS, Overlays
from onnxcam.runner.inputs.preprocess import Region
from onnxcam.runner.methods.maps import normalise
from onnxcam.runner.size import Size


def to_image_size(map_: np.ndarray, region: Region, size: Size) -> np.ndarray:
    """A [h,w] or [3,H,W] map resized bilinearly onto the region the model saw; zero elsewhere in `size`."""
    (x0, y0, x1, y1), (height, width) = region, size
    planar = map_.ndim == 3
    resized = cv2.resize(map_.transpose(1, 2, 0) if planar else map_, (x1 - x0, y1 - y0),
                         interpolation=cv2.INTER_LINEAR)
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return resized
    full = np.zeros((height, width, *resized.shape[2:]), np.float32)
    full[y0:y1, x0:x1] = resized
    return full


def scaled(region: Region, size: Size, drawn: Size) -> Region:
    """A region in the pixels of an image of `size`, in the pixels of the image drawn at `drawn`."""
    if size == drawn:
        return region
    sx, sy = drawn.width / size.width, drawn.height / size.height
    x0, y0 = round(region[0] * sx), round(region[1] * sy)
    return x0, y0, max(round(region[2] * sx), x0 + 1), max(round(region[3] * sy), y0 + 1)


def in_image_pixels(point: tuple[int, int], size: Size, drawn: Size) -> tuple[int, int]:
    """A pixel (x, y) of the image drawn at `drawn`, in the pixels of the image of `size` (the centre of the area it
    covers)."""
    if size == drawn:
        return point
    (x, y), (height, width), (drawn_height, drawn_width) = point, size, drawn
    return min(width - 1, int((x + 0.5) * width / drawn_width)), min(height - 1, int((y + 0.5) * height / drawn_height))


def compact(map_: np.ndarray, guided: bool) -> np.ndarray:
    """A method's map at its own resolution, as stored by default: divided by its largest |value| (0 stays 0, so
    padding with zeros and min-max scaling at the image's size gives what `heatmap` draws), or the RGB rendering
    [H,W,3] of a guided map."""
    if guided:
        own = Size(*map_.shape[1:])
        return guided_image(map_, (0, 0, own.width, own.height), own)
    largest = float(np.abs(map_).max())
    return map_ / largest if largest > 0 else np.zeros_like(map_)


def heatmap(map_: np.ndarray, region: Region, size: Size) -> np.ndarray:
    """CAM-family map -> [H,W] float32 in [0,1] at the given image size."""
    return normalise(to_image_size(map_, region, size)[None])[0]


def guided_image(gradients: np.ndarray, region: Region, size: Size) -> np.ndarray:
    """Guided gradients [3,H,W] (RGB) -> [H,W,3] RGB in [0,1], as pytorch-grad-cam's deprocess_image:
    centred, scaled to 0.1 standard deviations around grey."""
    rgb = to_image_size(gradients, region, size)
    rgb = (rgb - rgb.mean()) / (rgb.std() + 1e-5) * 0.1 + 0.5
    return np.clip(rgb, 0, 1)


def draw(map_: np.ndarray, region: Region, size: Size, guided: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """A map as the overlay draws it at the given size, and its peak (x, y): a CAM-family map as 8-bit grey,
    min-max scaled (the heatmap's round(255 v), from one min/max pass and one scaling pass instead of `heatmap`'s
    float arrays; a grey level apart in a few pixels per million), the strongest point its first maximum; a
    guided map as its 8-bit BGR picture, the strongest point the largest |gradient| over channels."""
    if guided:
        rgb = guided_image(map_, region, size)
        y, x = np.unravel_index(int(np.argmax(np.abs(rgb - 0.5).max(axis=2))), size)
        return np.round(rgb[:, :, ::-1] * 255).astype(np.uint8), (int(x), int(y))
    full = to_image_size(map_, region, size)
    low, high, _, peak = cv2.minMaxLoc(full)
    scale = 255 / (high - low) if high > low else 0.0
    return cv2.convertScaleAbs(full, alpha=scale, beta=-low * scale), peak


OUTLINE_BGR = (255, 255, 255)  # a segmenter's region, outlined on its overlays


def region_mask(mask: np.ndarray, region: Region, size: Size) -> np.ndarray:
    """A row's region [h,w] bool (model input frame) at the drawn size: 255 inside, 0 outside, nearest-neighbour
    onto the region the model saw (0 beyond it)."""
    (x0, y0, x1, y1), (height, width) = region, size
    full = np.zeros((height, width), np.uint8)
    full[y0:y1, x0:x1] = cv2.resize(mask.astype(np.uint8) * 255, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    return full


def outline(picture: np.ndarray, drawn_mask: np.ndarray) -> np.ndarray:
    """The picture with the region's outline drawn over it (a line one pixel wide)."""
    contours, _ = cv2.findContours(drawn_mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(picture.copy(), contours, -1, OUTLINE_BGR, 1)


@cache
def _colour_tables(colormap: str) -> tuple[np.ndarray, ...]:
    """OpenCV's colormap as three 256-entry tables (B, G, R): `cv2.applyColorMap` rebuilds its table on every
    call (0.15 ms, whatever the picture's size); three lookups and a merge give the same pixels."""
    table = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], COLORMAPS[colormap])[:, 0]
    return tuple(np.ascontiguousarray(table[:, channel]) for channel in range(3))


def overlay(image_bgr: np.ndarray, drawn: np.ndarray, guided: bool, style: Overlays) -> np.ndarray:
    """`draw`'s picture of a CAM-family map colour-mapped and blended over the photo (alpha = the map's weight);
    a guided map's picture is its own overlay."""
    if guided:
        return drawn
    coloured = cv2.merge([cv2.LUT(drawn, table) for table in _colour_tables(style.colormap)])
    return cv2.addWeighted(coloured, style.alpha, image_bgr, 1 - style.alpha, 0)


def shrink(image: np.ndarray, size: Size) -> np.ndarray:
    """A picture scaled down to `size` for a thumbnail: area averaging by the largest whole factor
    that stays above it (OpenCV's fast path; a factor like 1.95 takes its slow one, 0.7 ms for 500x375), then
    bilinear."""
    height, width = image.shape[:2]
    k = min(width // size.width, height // size.height)
    if k >= 2:
        image = cv2.resize(image[:height - height % k, :width - width % k], None, fx=1 / k, fy=1 / k,
                           interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (size.width, size.height), interpolation=cv2.INTER_LINEAR)
