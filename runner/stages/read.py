"""The read stage: an image file -> its model input (and, for overlays, its pixels at the size they are drawn), or
the one-line reason it cannot be used.

Large JPEGs are decoded at 1/2, 1/4 or 1/8 of their size (libjpeg's DCT scaling) as long as the region the
model sees stays at least twice the model input and, where overlays are written, the picture stays at least
as large as they are drawn; the photograph is then kept only at that size. `memory` estimates, from the file's
header, what an image holds while it is in flight, for the engine's memory budget.
"""

from __future__ import annotations

import math
import os
import struct

import cv2
from onnxcam.runner.inputs.decode import ImageError, decode_image, peek
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.inputs.masks import LabelImages, MaskError
from onnxcam.runner.inputs.preprocess import model_region, to_input
from onnxcam.runner.model.graph import Preprocessing
from onnxcam.runner.size import Size
from onnxcam.runner.stages.items import DecodedImage, one_line

WRITE_BYTES_PER_PIXEL = 48  # rendering one map at the drawn size: float32 maps, colormap, blend, encoding
UNKNOWN_SIZE_FACTOR = 12  # decoded bytes per file byte when the header does not say the size
UNUSABLE = 1 << 20  # what a file that will become an error row holds
DRAWN_SLACK = 0.95  # a reduced decode this close to the overlay's size is drawn at its own size (never upscaled)


def render_size(size: Size, max_side: int | None) -> Size:
    """The size at which an image's overlays and heatmaps are drawn: its own, or scaled to fit max_side."""
    scale = 1.0 if max_side is None else min(1.0, max_side / max(size))
    return Size(max(1, round(size.height * scale)), max(1, round(size.width * scale)))


class ReadStage:
    def __init__(self, preprocessing: Preprocessing, max_pixels: int, max_side: int | None, keep_pixels: bool,
                 uint8_input: bool = False, labels: LabelImages | None = None):
        self.preprocessing, self.max_pixels, self.labels = preprocessing, max_pixels, labels
        self.max_side, self.keep_pixels, self.uint8_input = max_side, keep_pixels, uint8_input

    def reduction(self, size: Size) -> int:
        """The largest k in 8, 4, 2 (or 1) at which a JPEG of this size still serves the model and the overlays."""
        x0, y0, x1, y1 = model_region(size, self.preprocessing)
        model_height, model_width = self.preprocessing.size
        drawn = DRAWN_SLACK * max(render_size(size, self.max_side)) if self.keep_pixels else 1
        for k in (8, 4, 2):
            if ((x1 - x0) // k >= 2 * model_width and (y1 - y0) // k >= 2 * model_height
                    and max(size) // k >= drawn):
                return k
        return 1

    def __call__(self, ref: ImageRef) -> DecodedImage:
        decoded = DecodedImage(ref)
        try:
            image, decoded.size = decode_image(ref.path, self.max_pixels, self.reduction)
            decoded.tensor, _ = to_input(image, self.preprocessing, self.uint8_input)
            decoded.region = model_region(decoded.size, self.preprocessing)
            if self.labels:
                decoded.label = self.labels.read(ref.key, decoded.size, self.preprocessing)
            decoded.render_size = drawn = render_size(decoded.size, self.max_side)
            if self.keep_pixels:
                decoded_size = Size(*image.shape[:2])
                if max(decoded_size) < max(drawn):  # a reduced decode just short of the cap
                    decoded.render_size = drawn = decoded_size
                same = decoded_size == drawn
                decoded.image = (image if same
                                 else cv2.resize(image, (drawn.width, drawn.height), interpolation=cv2.INTER_AREA))
        except (ImageError, MaskError) as error:
            decoded.error = str(error)
        except Exception as error:  # noqa: BLE001 - whatever a decoder throws, this file becomes an error row
            decoded.error = f"cannot decode ({type(error).__name__}: {one_line(error)})"
        if decoded.error:
            decoded.size = decoded.render_size = Size(0, 0)
            decoded.tensor = decoded.image = decoded.label = None
        return decoded

    def memory(self, ref: ImageRef) -> int:
        """Bytes this image holds at most while in flight (the file, its decoding, the drawn picture and maps),
        estimated from its header without decoding."""
        try:
            file_bytes = os.path.getsize(ref.path)
            jpeg, size = peek(ref.path)
            if size is not None and not 0 < size.width * size.height <= self.max_pixels:
                return UNUSABLE  # the read stage refuses it
            return self._estimate(file_bytes, jpeg, size)
        except (OSError, ImageError, ValueError, ArithmeticError, struct.error):
            return UNUSABLE

    def _estimate(self, file_bytes: int, jpeg: bool, size: Size | None) -> int:
        model_height, model_width = self.preprocessing.size
        tensors = 16 * 3 * model_height * model_width  # input, model outputs, maps at model size
        if size is None:
            return file_bytes * (1 + UNKNOWN_SIZE_FACTOR) + tensors
        height, width = size
        k = self.reduction(size) if jpeg else 1
        decoded = 3 * math.ceil(width / k) * math.ceil(height / k)
        decoding = decoded if jpeg else 2 * 3 * width * height  # other formats may decode 16 bits first
        drawn = render_size(size, self.max_side)
        drawing = WRITE_BYTES_PER_PIXEL * drawn.width * drawn.height
        return file_bytes + decoding + decoded + drawing + tensors
