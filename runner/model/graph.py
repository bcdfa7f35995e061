"""The explain-graph contract: input/output names and the metadata that makes a file self-describing.

Shared by the exporter (which writes it) and the runner (which reads it); needs no torch.
Each metadata value is stored as JSON under its key in the ONNX `metadata_props`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxcam.runner.size import Size

INPUTS = ("input", "target")
OUTPUTS = ("logits", "activations", "gradients", "input_gradients", "plain_input_gradients")
# A segmenter's graph (task "segmentation") takes a third input, the pixels whose class scores make the target score
# (pixel weights [1|N, 1|H, 1|W], broadcast; negative: the pixels predicted as the target class), and adds two outputs:
# class_share [N, K], the share of the pixels predicted as each class, and label_map [N, H, W] uint8, the prediction.
TARGET_MASK = "target_mask"
PREDICTED_MASK = np.full((1, 1, 1), -1, np.float32)  # the target_mask that asks for the model's own prediction
SEGMENTATION_OUTPUTS = ("class_share", "label_map")
TASKS = ("classification", "segmentation")
REQUIRED_OUTPUTS = OUTPUTS[:3]
FLOAT_INPUT = "input_float"  # in a uint8-input graph, the normalised float input its first nodes compute
GRAPH_MAP_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")  # maps a graph may compute itself


def map_output(method: str) -> str:
    """The output holding a method's maps [N, h, w] computed in the graph (`onnxcam convert --maps`)."""
    return f"map_{method}"
FORMAT_VERSION = 1


@dataclass
class Preprocessing:
    """How an RGB uint8 image becomes the `input` tensor: resize, scale to [0, 1], (x - mean) / std."""

    size: Size  # the model input's (stored in the metadata as [height, width])
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "stretch"  # stretch | center_crop
    crop_fraction: float = 0.875  # center_crop: crop size / resize size
    channel_order: str = "RGB"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        self.size = Size(*self.size)


# The metadata's spelling of the precision (the file format's, as first written), so that graph files stay as they were
# and every runner reads them; inside onnxcam the names are config.PRECISIONS'.
FILE_PRECISIONS = {"f32": "fp32", "f16": "fp16"}


@dataclass
class GraphInfo:
    preprocessing: Preprocessing
    labels: list[str]
    target_layer: str
    activation_shape: tuple[int, int, int]  # (C, h, w)
    output_activation: str  # softmax | sigmoid
    outputs: list[str]
    gap_linear_head: bool
    model: str
    versions: dict[str, str] = field(default_factory=dict)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    convolutions: dict[str, str] = field(default_factory=dict)  # ONNX weight name -> PyTorch module (filters)
    graph_maps: list[str] = field(default_factory=list)  # methods whose maps the graph computes (map_<method>)
    input_format: str = "float"  # float: [N,3,H,W] normalised; uint8: [N,H,W,3] BGR pixels, normalised in the graph
    precision: str = "f32"  # f32 | f16: what the model computes in; its inputs and outputs are float32 either way
    gradient_scale: float = 1.0  # f16: the power of two the class score is scaled by before the backward (undone)
    task: str = "classification"  # or segmentation: logits per pixel, explained over a target mask (TARGET_MASK)
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_metadata(self) -> dict[str, str]:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["preprocessing"] = self.preprocessing.__dict__
        values["precision"] = FILE_PRECISIONS.get(self.precision, self.precision)
        return {key: json.dumps(value) for key, value in values.items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str = "model") -> GraphInfo:
        try:
            values = {name: json.loads(props[name]) for name in cls.__dataclass_fields__ if name in props}
            pre = values.pop("preprocessing")
            pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
            values["activation_shape"] = tuple(values["activation_shape"])
            if "precision" in values:
                values["precision"] = {file: name for name, file in FILE_PRECISIONS.items()}.get(values["precision"],
                                                                                                 values["precision"])
            return cls(preprocessing=Preprocessing(**pre), **values)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: not an onnxcam explain graph (metadata {error}); "
                             "export it with `onnxcam export`") from None


def external_data_path(graph: Path) -> Path:
    """Where a graph too large for one protobuf (2 GB) keeps its weights: `<name>.data` beside it."""
    return graph.with_name(graph.name + ".data")


def read_graph_info(path: str | Path) -> GraphInfo:
    """Read the metadata only (the weights stay on disk)."""
    model = onnx.load(str(path), load_external_data=False)
    return GraphInfo.from_metadata({p.key: p.value for p in model.metadata_props}, source=str(path))


def probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    """The model's scores: softmax over classes, or an element-wise sigmoid for multi-label models."""
    if activation == "sigmoid":
        return 1 / (1 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
