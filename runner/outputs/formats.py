"""Output formats: how a heatmap or an overlay becomes the bytes of a file.

A format is one encoder plus one entry in HEATMAP_FORMATS or OVERLAY_FORMATS (the key is the file
extension); the manifest accepts exactly the keys of these tables.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import cv2
import numpy as np
from onnxcam.runner.methods.maps import normalise


def _encoded(extension: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, data = cv2.imencode(extension, image, params or [])
    if not ok:
        raise OSError(f"OpenCV could not encode a {extension[1:]} image")
    return data.tobytes()


def heatmap_npy(values: np.ndarray, guided: bool) -> bytes:
    """float16 values in [0,1]: [H,W], or [H,W,3] RGB for guided methods."""
    buffer = io.BytesIO()
    np.save(buffer, values.astype(np.float16))
    return buffer.getvalue()


def heatmap_png(values: np.ndarray, guided: bool) -> bytes:
    """8-bit grey, min-max scaled (a compact map may hold negative values), or 8-bit colour for guided methods."""
    image = np.round((values if guided else normalise(values[None])[0]) * 255).astype(np.uint8)
    return _encoded(".png", image[:, :, ::-1] if guided else image)


def overlay_jpg(image_bgr: np.ndarray, quality: int) -> bytes:
    return _encoded(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])


def overlay_png(image_bgr: np.ndarray, quality: int) -> bytes:
    return _encoded(".png", image_bgr)


def _voc_palette() -> list[int]:
    """PASCAL VOC's colour map (class k's colour from the bits of k), so a VOC label map shows as VOC's own."""
    palette = []
    for k in range(256):
        red = green = blue = 0
        for shift in range(8):
            red |= ((k >> 0) & 1) << (7 - shift)
            green |= ((k >> 1) & 1) << (7 - shift)
            blue |= ((k >> 2) & 1) << (7 - shift)
            k >>= 3
        palette += [red, green, blue]
    return palette


VOC_PALETTE = _voc_palette()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def label_map_png(label_map: np.ndarray) -> bytes:
    """A label map [H,W] uint8 as an indexed PNG (colour type 3): each pixel's value its class, shown in VOC's
    colours. Written here, as OpenCV writes no palette."""
    height, width = label_map.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), label_map.astype(np.uint8)], axis=1)  # filter 0: none
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
            + _png_chunk(b"PLTE", bytes(VOC_PALETTE)) + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + _png_chunk(b"IEND", b""))


def mask_png(mask: np.ndarray) -> bytes:
    """A row's region at the drawn size as 8-bit grey: 255 inside, 0 outside."""
    return _encoded(".png", mask)


HEATMAP_FORMATS: dict[str, Callable[[np.ndarray, bool], bytes]] = {"npy": heatmap_npy, "png": heatmap_png}
OVERLAY_FORMATS: dict[str, Callable[[np.ndarray, int], bytes]] = {"jpg": overlay_jpg, "png": overlay_png}
