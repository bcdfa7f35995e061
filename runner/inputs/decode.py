"""Decoding input images; every bad file becomes an ImageError with a one-line reason."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np


class ImageError(ValueError):
    """This file cannot be explained (the run records an error row and goes on)."""


JPEG_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}  # libjpeg's DCT scaling: decodes 1/k of each side, k^2 times less work


def is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def header_size(data: bytes, complete: bool = True) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP, GIF, WebP or TIFF header without decoding; None if unknown.
    `complete`: `data` is the whole file, so a JPEG without its end marker is reported as truncated."""
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
    if data[:4] in (b"II*\x00", b"MM\x00*") and len(data) >= 8:
        return _tiff_size(data)
    if is_jpeg(data):
        return _jpeg_size(data, complete)
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """Width and height tags (256, 257) of a TIFF's first image directory, if it lies within `data`."""
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    if offset + 2 > len(data):
        return None
    entries = struct.unpack(order + "H", data[offset:offset + 2])[0]
    found = {}
    for k in range(entries):
        entry = data[offset + 2 + 12 * k:offset + 14 + 12 * k]
        if len(entry) < 12:
            return None
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):  # SHORT (type 3) or LONG values, stored in the entry itself
            found[tag] = struct.unpack(order + "H", entry[8:10])[0] if kind == 3 else struct.unpack(order + "I",
                                                                                                    entry[8:12])[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _jpeg_size(data: bytes, complete: bool) -> tuple[int, int] | None:
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
            if complete and data.find(b"\xff\xd9", position + 2 + length) < 0:
                raise ImageError("truncated JPEG (the image data has no end marker)")
            return size
        position += 2 + length
    if complete:
        raise ImageError("truncated JPEG (ends before the image data)")
    return size


def peek(path: str | Path, head_bytes: int = 1 << 18) -> tuple[bool, tuple[int, int] | None]:
    """Whether a file is a JPEG, and its (width, height) when its first bytes say it (a TIFF's image directory
    is read where it lies, often at the end), without decoding. Raises OSError or ImageError."""
    with open(path, "rb") as file:
        head = file.read(head_bytes)
        size = header_size(head, complete=False)
        if size is None and head[:4] in (b"II*\x00", b"MM\x00*"):
            offset = struct.unpack("<I" if head[:2] == b"II" else ">I", head[4:8])[0]
            file.seek(offset)
            directory = file.read(2 + 12 * 64)
            size = _tiff_size(head[:4] + struct.pack("<I" if head[:2] == b"II" else ">I", 8) + directory)
    return is_jpeg(head), size


def decode_image(path: str | Path, max_pixels: int, reduction: Callable[[int, int], int] | None = None
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode to 8-bit BGR [H,W,3], EXIF orientation applied; grey, alpha, 16-bit and CMYK are converted.

    `reduction(width, height)` may ask for a JPEG to be decoded at 1/k of its size (k = 1, 2, 4 or 8), which
    libjpeg does k^2 times faster and in k^2 times less memory. Returns the image and its full (width, height).
    """
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
    k = reduction(*size) if reduction and size and is_jpeg(data) else 1
    image = cv2.imdecode(np.frombuffer(data, np.uint8), JPEG_REDUCED[k])
    del data
    if image is None:
        raise ImageError("not a decodable image (corrupt, truncated or not an image format OpenCV reads)")
    full = (image.shape[1], image.shape[0]) if k == 1 else _full_size(size, image.shape, k)
    if full[0] * full[1] > max_pixels:
        raise ImageError(f"{full[0]}x{full[1]} is over images.max_pixels ({max_pixels / 1e6:g} MP)")
    return image, full


def _full_size(header: tuple[int, int], shape: tuple[int, ...], k: int) -> tuple[int, int]:
    """The full (width, height) of an image decoded at 1/k: the header's, swapped where EXIF rotated it."""
    width, height = header
    return (width, height) if shape[1] == -(-width // k) else (height, width)
