"""What a manifest says, as types: the sections, every option with its default (written here once), and the keys the
manifest reader accepts (`manifest_keys`). A leaf: it imports nothing of onnxcam, so the reader (manifest.py), the
stages and the outputs all read the configuration without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ManifestError(ValueError):
    """A mistake in the manifest; the message is one line naming the key and the fix."""


@dataclass(frozen=True)
class Option:
    """An option of a method or a metric: a default, and the range or the choices the manifest may give."""

    default: bool | int | float | str | tuple[int, ...]  # a tuple: a list of integers in [low, high]
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


def defaults(options: dict[str, Option]) -> dict[str, Any]:
    return {name: option.default for name, option in options.items()}


DEFAULT_INCLUDE = ("**/*.jpg", "**/*.jpeg", "**/*.png", "**/*.bmp", "**/*.webp", "**/*.tif", "**/*.tiff")
COLORMAPS = {"jet": 2, "hot": 11, "inferno": 14, "magma": 13, "plasma": 15, "viridis": 16, "turbo": 20,
             "parula": 12, "rainbow": 4, "bone": 1}  # OpenCV COLORMAP_* values
FILLS = ("mean", "zero", "blur")  # what replaces removed pixels in the extra passes (model/passes.py)
PRECISIONS = ("f32", "f16", "bf16", "tf32")  # what a model computes in, everywhere: graph metadata, backends, run.json
# (runtime.precision asks for one of them, or auto: the backend's choice)
DEFAULT_MAX_SIDE = 2048
DEFAULT_THUMBNAIL_SIDE = 256

_BATCH = Option(64, 1, 4096)
METHOD_OPTIONS: dict[str, dict[str, Option]] = {  # the methods that take options (methods/__init__.py: the rest)
    "gradcam": {"guided_weights": Option(False)},
    "activations": {"channels": Option((), 0, 1 << 20), "top": Option(0, 0, 4096),
                    "rank_by": Option("mean", choices=("mean", "gradcam"))},
    "smoothgrad": {"noise": Option(0.15, 0.0, 10.0), "samples": Option(25, 1, 10_000),
                   "batch_size": Option(16, 1, 4096)},
    "occlusion": {"patch": Option(32, 1, 4096), "stride": Option(16, 1, 4096), "fill": Option("mean", choices=FILLS),
                  "batch_size": _BATCH},
    "patches": {"patch": Option(32, 1, 4096), "stride": Option(32, 1, 4096),
                "view": Option("keep", choices=("keep", "crop")), "fill": Option("mean", choices=FILLS),
                "batch_size": _BATCH},
    "fixations": {"sigma": Option(12.0, 0.0, 1000.0), "batch_size": Option(8, 1, 4096)},
    "scorecam": {"batch_size": _BATCH},
}
METRIC_OPTIONS: dict[str, dict[str, Option]] = {  # the metrics that take options (evaluate/metrics.py: the rest)
    "top_removal": {"fraction": Option(0.25, 0.0, 1.0), "fill": Option("mean", choices=FILLS)},
    "deletion": {"steps": Option(20, 2, 1000), "baseline": Option("mean", choices=FILLS)},
    "insertion": {"steps": Option(20, 2, 1000), "baseline": Option("blur", choices=FILLS)},
}

SECTIONS: dict[str, tuple[str, ...]] = {  # the keys of each mapping of the manifest ("": the top level)
    "": ("model", "images", "targets", "methods", "evaluate", "output", "runtime"),
    "images": ("root", "include", "list", "max_pixels"),
    "targets": ("topk", "classes", "labels", "threshold", "present", "masks"),
    "targets.present": ("min_area", "ignore_classes"),
    "targets.masks": ("dir", "ignore_index", "ignore_classes"),
    "output": ("dir", "overlays", "heatmaps", "thumbnails", "label_maps"),
    "output.overlays": ("format", "quality", "colormap", "alpha", "max_side"),
    "output.heatmaps": ("format", "size"),
    "runtime": ("backend", "providers", "precision", "batch_size", "workers", "worker_processes", "memory_budget"),
    "evaluate": ("metrics", "boxes", "batch_size"),
}


def manifest_keys() -> tuple[str, ...]:
    """Every dotted key the manifest reader accepts: sections and their keys, `<method>.<option>` (a top-level method
    section) and `evaluate.<metric>.<option>`."""
    keys = [f"{section}.{name}" if section else name for section, names in SECTIONS.items() for name in names]
    for method, options in METHOD_OPTIONS.items():
        keys += [method, *(f"{method}.{name}" for name in options)]
    for metric, options in METRIC_OPTIONS.items():
        keys += [f"evaluate.{metric}", *(f"evaluate.{metric}.{name}" for name in options)]
    return tuple(keys)


SEGMENTATION_TARGETS = ("present", "masks")  # target kinds of segmenters only (CLASSIFICATION_TARGETS: classifiers')
CLASSIFICATION_TARGETS = ("topk", "threshold")
DEFAULT_MIN_AREA = 0.01  # targets.present: a class predicted on at least this share of the pixels is explained
DEFAULT_IGNORE_INDEX = 255  # targets.masks: the label images' "not labelled" value (VOC's borders)
BACKGROUND_LABELS = ("__background__", "background")  # a class so labelled is left out of present and masks


@dataclass
class Targets:
    kind: str = "top1"  # top1 | topk | classes | labels | threshold; a segmenter's also present | masks
    k: int = 1
    classes: list[int | str] = field(default_factory=list)
    labels_file: Path | None = None
    threshold: float = 0.5
    min_area: float = DEFAULT_MIN_AREA
    ignore_classes: list[int | str] | None = None  # None: the class labelled background, if the model has one
    masks_dir: Path | None = None
    ignore_index: int = DEFAULT_IGNORE_INDEX
    default: bool = False  # the manifest has no targets: top1 for a classifier, present for a segmenter


@dataclass
class Overlays:
    format: str = "jpg"
    quality: int = 90
    colormap: str = "jet"
    alpha: float = 0.4
    max_side: int | None = DEFAULT_MAX_SIDE  # the longer side of what is drawn at most; None: the image's own size


@dataclass
class Heatmaps:
    format: str = "npy"  # a key of HEATMAP_FORMATS, or none
    size: str = "model"  # model: the method's own map (compact), placed by index.csv's region; original: the image's


@dataclass
class Evaluation:
    """The manifest's `evaluate` section (evaluate/metrics.py scores it)."""

    metrics: dict[str, dict[str, object]]  # name -> options, in the manifest's order
    boxes: Path | None = None
    batch_size: int = 64


@dataclass
class Manifest:
    path: Path
    model: Path
    images_root: Path | None
    images_list: Path | None
    methods: dict[str, dict[str, Any]]  # name -> options, in the manifest's order
    output_dir: Path
    include: tuple[str, ...] = DEFAULT_INCLUDE
    max_pixels: int = 50_000_000
    targets: Targets = field(default_factory=Targets)
    overlays: Overlays | None = field(default_factory=Overlays)
    heatmaps: Heatmaps = field(default_factory=Heatmaps)
    thumbnails: int | None = DEFAULT_THUMBNAIL_SIDE  # the longer side of the report's small pictures; None: none
    label_maps: bool = False  # a segmenter's predicted label map, one indexed PNG per image
    backend: str = "onnxruntime"  # a key of model/registry.py's BACKENDS
    providers: str | list[str] = "auto"  # ONNX Runtime's: auto, or a list of cuda, cpu
    batch_size: int = 32
    workers: int = 4
    memory_budget: int = 2 * 1024**3  # bytes that images in flight may hold
    evaluate: Evaluation | None = None
    precision: str = "auto"  # auto | f32 | bf16 (the backends' precisions): auto is bf16 on OpenVINO where the CPU
    # has it, TF32 on CUDA
    worker_processes: bool = False  # the local engine reads and writes in `workers` processes instead of threads

    @property
    def max_side(self) -> int | None:
        """The longer side of overlays, original-size heatmaps and the peak search (the overlays' setting)."""
        return self.overlays.max_side if self.overlays else DEFAULT_MAX_SIDE
