"""The read stage: an image file -> its pixels and model input, or the one-line reason it cannot be used."""

from __future__ import annotations

from onnxcam.runner.inputs.decode import ImageError, decode_image
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.inputs.preprocess import to_input
from onnxcam.runner.model.graph import Preprocessing
from onnxcam.runner.stages.items import DecodedImage, one_line


class ReadStage:
    def __init__(self, preprocessing: Preprocessing, max_pixels: int):
        self.preprocessing, self.max_pixels = preprocessing, max_pixels

    def __call__(self, ref: ImageRef) -> DecodedImage:
        decoded = DecodedImage(ref)
        try:
            decoded.image = decode_image(ref.path, self.max_pixels)
            decoded.tensor, decoded.region = to_input(decoded.image, self.preprocessing)
        except ImageError as error:
            decoded.error, decoded.image = str(error), None
        except Exception as error:  # noqa: BLE001 - whatever a decoder throws, this file becomes an error row
            decoded.error, decoded.image = f"cannot decode ({type(error).__name__}: {one_line(error)})", None
        return decoded
