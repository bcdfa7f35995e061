"""Decoding input images; every bad file becomes an ImageError with a one-line reason."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from onnxcam.runner.size import Size


class ImageError(ValueError):
    """This file cannot be explained (the run records an error row and goes on)."""


JPEG_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}  # libjpeg's DCT scaling: decodes 1/k of each side, k^2 times less work


def is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def header_size(data: bytes, complete: bool = True) -> Size | None:
    """The size of a PNG, JPEG, BMP, GIF, WebP or TIFF from its header without decoding, as the picture is shown
    (a JPEG's EXIF orientation applied); None if unknown. `complete`: `data` is the whole file, so a JPEG
    without its end marker is reported as truncated."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return Size(height, width)
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return Size(abs(height), abs(width))
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return Size(height, width)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        if data[12:16] == b"VP8X":
            return Size(1 + int.from_bytes(data[27:30], "little"), 1 + int.from_bytes(data[24:27], "little"))
        if data[12:16] == b"VP8 ":
            width, height = struct.unpack("<HH", data[26:30])
            return Size(height & 0x3FFF, width & 0x3FFF)
        if data[12:16] == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return Size(1 + ((bits >> 14) & 0x3FFF), 1 + (bits & 0x3FFF))
    if data[:4] in TIFF_MAGIC and len(data) >= 8:
        return _tiff_size(data)
    if is_jpeg(data):
        return _jpeg_size(data, complete)
    return None


TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
WIDTH_HEIGHT = (256, 257)  # a TIFF image file directory's tags for the image's width and height
ROTATED = (5, 6, 7, 8)  # EXIF orientations shown turned by 90 degrees (width and height swap)


def _tiff_order(data: bytes) -> str:
    return "<" if data[:2] == b"II" else ">"


def _directory(data: bytes, order: str, offset: int, tags: tuple[int, ...]) -> dict[int, int]:
    """The SHORT or LONG values of `tags` in the TIFF image file directory at `offset` of `data` (those found)."""
    found: dict[int, int] = {}
    if offset + 2 > len(data):
        return found
    for k in range(struct.unpack(order + "H", data[offset:offset + 2])[0]):
        entry = data[offset + 2 + 12 * k:offset + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in tags:  # a SHORT (type 3) or LONG value, stored in the entry itself
            value = entry[8:10] if kind == 3 else entry[8:12]
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value)[0]
            if len(found) == len(tags):
                break
    return found


def _tiff_size(data: bytes) -> Size | None:
    """The size of a TIFF's first image directory, if it lies within `data`."""
    order = _tiff_order(data)
    return _directory_size(_directory(data, order, struct.unpack(order + "I", data[4:8])[0], WIDTH_HEIGHT))


def _directory_size(found: dict[int, int]) -> Size | None:
    """The size that a TIFF image file directory's width and height tags (256, 257) give, if both were found."""
    return Size(found[257], found[256]) if len(found) == 2 else None


def _exif_rotated(segment: bytes) -> bool:
    """Whether a JPEG's APP1 Exif segment (from its "Exif\\0\\0") says the picture is shown turned by 90 degrees."""
    tiff = segment[6:]
    if len(tiff) < 8 or tiff[:4] not in TIFF_MAGIC:
        return False
    order = _tiff_order(tiff)
    return _directory(tiff, order, struct.unpack(order + "I", tiff[4:8])[0], (274,)).get(274) in ROTATED


def _jpeg_size(data: bytes, complete: bool) -> Size | None:
    """Walks the JPEG segments to the first frame header; also checks that the image data is complete."""
    position, size, rotated = 2, None, False
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ImageError("corrupt JPEG (bad segment marker)")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker == 0xE1 and data[position + 4:position + 10] == b"Exif\x00\x00":
            rotated = _exif_rotated(data[position + 4:position + 2 + length])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and position + 9 <= len(data):
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            size = Size(width, height) if rotated else Size(height, width)
        if marker == 0xDA:  # start of scan: entropy-coded data follows; only the end marker can contain FF D9
            if complete and data.find(b"\xff\xd9", position + 2 + length) < 0:
                raise ImageError("truncated JPEG (the image data has no end marker)")
            return size
        position += 2 + length
    if complete:
        raise ImageError("truncated JPEG (ends before the image data)")
    return size


def peek(path: str | Path) -> tuple[bool, Size | None]:
    """Whether a file is a JPEG, and its shown size when its first bytes say it (a TIFF's image
    directory is read where it lies, often at the end), without decoding. Raises OSError or ImageError."""
    with open(path, "rb") as file:
        head = file.read(1 << 16)
        size = header_size(head, complete=False)
        if size is None and is_jpeg(head):  # a frame header behind a large EXIF or XMP block
            head += file.read(1 << 20)
            size = header_size(head, complete=False)
        if size is None and head[:4] in TIFF_MAGIC and len(head) >= 8:
            order = _tiff_order(head)
            file.seek(struct.unpack(order + "I", head[4:8])[0])
            size = _directory_size(_directory(file.read(4096), order, 0, WIDTH_HEIGHT))
    return is_jpeg(head), size


def decode_image(path: str | Path, max_pixels: int, reduction: Callable[[Size], int] | None = None
                 ) -> tuple[np.ndarray, Size]:
    """Decode to 8-bit BGR [H,W,3], EXIF orientation applied; grey, alpha, 16-bit and CMYK are converted.

    `reduction(size)` may ask for a JPEG to be decoded at 1/k of its size (k = 1, 2, 4 or 8), which
    libjpeg does k^2 times faster and in k^2 times less memory. Returns the image and its full size.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ImageError(f"cannot read ({error.strerror or error})") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    size = header_size(data)
    if size and size.width * size.height > max_pixels:
        raise ImageError(f"{size.width}x{size.height} is {size.width * size.height / 1e6:.1f} MP, over "
                         f"images.max_pixels ({max_pixels / 1e6:g} MP); raise the limit in the manifest to process it")
    k = reduction(size) if reduction and size and is_jpeg(data) else 1
    image = cv2.imdecode(np.frombuffer(data, np.uint8), JPEG_REDUCED[k])
    del data
    if image is None:
        raise ImageError("not a decodable image (corrupt, truncated or not an image format OpenCV reads)")
    full = Size(*image.shape[:2]) if k == 1 else size  # the header's size is the shown one
    if full.width * full.height > max_pixels:
        raise ImageError(f"{full.width}x{full.height} is over images.max_pixels ({max_pixels / 1e6:g} MP)")
    return image, full

