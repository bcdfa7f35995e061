"""What flows between the stages: a decoded image, its results per target, and a batch's results and costs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnxcam.runner.costs import Costs
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.inputs.preprocess import Region
from onnxcam.runner.size import Size


@dataclass
class DecodedImage:
    ref: ImageRef
    size: Size = Size(0, 0)  # the image's own; Size(0, 0) when it could not be decoded
    render_size: Size = Size(0, 0)  # the size at which overlays, heatmaps and peaks are drawn
    image: np.ndarray | None = None  # 8-bit BGR at render_size, kept only when overlays are written
    tensor: np.ndarray | None = None  # the model input: [3,H,W] float32, or [H,W,3] uint8 for a uint8-input graph
    region: Region = (0, 0, 0, 0)  # the part of the image the model saw, in its own pixels
    label: np.ndarray | None = None  # targets.masks: its label image in the model input's frame [H,W] (classes)
    error: str = ""


@dataclass
class TargetResult:
    target_class: int
    score: float
    maps: dict[str, np.ndarray]  # method -> its map (model or target-layer resolution)
    metrics: dict[str, dict[str, object]] = field(default_factory=dict)  # method -> metric column -> value
    channels: dict[str, int] = field(default_factory=dict)  # a multi-map method's map -> the channel it shows
    mask: np.ndarray | None = None  # a segmenter's row: its region [H,W] bool, in the model input's frame
    mask_kind: str = ""  # predicted | given (a segmenter's row)
    share: float | None = None  # the region's share of the model input's pixels


@dataclass
class ImageResult:
    decoded: DecodedImage
    error: str = ""  # why the image has no results (decoding, the labels file, a failed batch)
    pred: tuple[int, float] | None = None  # the model's top-1 class and score (a segmenter's: the class predicted
    # on most pixels, and its share of the pixels)
    label_map: np.ndarray | None = None  # a segmenter's prediction [H,W] uint8, when the outputs need it
    targets: list[TargetResult] = field(default_factory=list)  # none: a threshold selected no class


@dataclass
class BatchResult:
    images: list[ImageResult]
    costs: Costs


def one_line(error: BaseException) -> str:
    """An exception's message on one line (at most 300 characters), for an error row."""
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__
