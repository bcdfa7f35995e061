"""Decoding input images; every bad file becomes an ImageError with a one-line reason."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np


class ImageError(ValueError):
    """This file cannot be explained (the run records an error row and goes on)."""


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP, GIF or WebP header without decoding; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        if data[12:16] == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if data[12:16] == b"VP8 ":
            width, height = struct.unpack("<HH", data[26:30])
            return width & 0x3FFF, height & 0x3FFF
        if data[12:16] == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walks the JPEG segments to the first frame header; also checks that the image data is complete."""
    position, size = 2, None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ImageError("corrupt JPEG (bad segment marker)")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and position + 9 <= len(data):
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows; only the end marker can contain FF D9
            if data.find(b"\xff\xd9", position + 2 + length) < 0:
                raise ImageError("truncated JPEG (the image data has no end marker)")
            return size
        position += 2 + length
    raise ImageError("truncated JPEG (ends before the image data)")


def decode_image(path: str | Path, max_pixels: int) -> np.ndarray:
    """Decode to 8-bit BGR [H,W,3], EXIF orientation applied; grey, alpha, 16-bit and CMYK are converted."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ImageError(f"cannot read ({error.strerror or error})") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    size = header_size(data)
    if size and size[0] * size[1] > max_pixels:
        raise ImageError(f"{size[0]}x{size[1]} is {size[0] * size[1] / 1e6:.1f} MP, over images.max_pixels "
                         f"({max_pixels / 1e6:g} MP); raise the limit in the manifest to process it")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError("not a decodable image (corrupt, truncated or not an image format OpenCV reads)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(f"{image.shape[1]}x{image.shape[0]} is over images.max_pixels ({max_pixels / 1e6:g} MP)")
    return image
