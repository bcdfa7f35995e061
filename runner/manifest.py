"""The run manifest: YAML, validated in full before any work starts.

Every error is one line that names the manifest file, the key and the fix. Relative paths are
resolved against the manifest's folder.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from onnxcam.runner.config import (
    COLORMAPS,
    METHOD_OPTIONS,
    METRIC_OPTIONS,
    SECTIONS,
    Evaluation,
    Heatmaps,
    Manifest,
    ManifestError,
    Option,
    Overlays,
    Targets,
    defaults,
)
from onnxcam.runner.evaluate.metrics import METRICS
from onnxcam.runner.methods import METHODS
from onnxcam.runner.model.registry import BACKENDS
from onnxcam.runner.outputs.formats import HEATMAP_FORMATS, OVERLAY_FORMATS

UNITS = {"": 1, "b": 1, "kb": 1024, "k": 1024, "mb": 1024**2, "m": 1024**2, "gb": 1024**3, "g": 1024**3}


class _Reader:
    """Walks a parsed YAML mapping, turning every mistake into a ManifestError that names the key."""

    def __init__(self, path: Path):
        self.path, self.base = path, path.parent

    def fail(self, key: str, message: str) -> ManifestError:
        return ManifestError(f"{self.path}: {key}: {message}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping with keys {', '.join(allowed)}, got {_kind(value)}")
        for name in value:
            if name not in allowed:
                close = difflib.get_close_matches(str(name), allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
                raise self.fail(f"{key}.{name}" if key else str(name), f"unknown key; {hint}")
        for name in required:
            if name not in value:
                raise self.fail(f"{key}.{name}" if key else name, "missing; this key is required")
        return value

    def typed(self, value: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(key, f"expected {what}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {what}, got {_kind(value)} {value!r}")
        return value

    def integer(self, value: Any, key: str, low: int, high: int | None = None, what: str = "an integer") -> int:
        self.typed(value, key, int, what)
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise self.fail(key, f"expected an integer {bound}, got {value}")
        return value

    def number(self, value: Any, key: str, low: float, high: float) -> float:
        self.typed(value, key, (int, float), "a number")
        if not low <= value <= high:
            raise self.fail(key, f"expected a number between {low} and {high}, got {value}")
        return float(value)

    def size_in_bytes(self, value: Any, key: str, low: int) -> int:
        """An integer of bytes, or a string such as 2GB, 512MB (units of 1024)."""
        text = str(value).strip().lower().replace(" ", "")
        number = text.rstrip("kmgb")
        unit = text[len(number):]
        try:
            count = int(float(number) * UNITS[unit]) if not isinstance(value, bool) else None
        except (ValueError, KeyError, OverflowError):
            count = None
        if count is None:
            raise self.fail(key, f"expected a size such as 2GB, 512MB or a number of bytes, got {value!r}")
        if count < low:
            raise self.fail(key, f"{value!r} is below the least useful budget, {low // 1024**2} MB; give more")
        return count

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def file(self, value: Any, key: str, directory: bool = False) -> Path:
        self.typed(value, key, str, "a path")
        path = (self.base / Path(value).expanduser()).resolve()
        if directory and not path.is_dir():
            raise self.fail(key, f"{path}: no such directory")
        if not directory and not path.is_file():
            raise self.fail(key, f"{path}: no such file")
        return path


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(value),
                                                                                          type(value).__name__)


def _ignore_classes(reader: _Reader, value: Any, key: str) -> list[int | str]:
    reader.typed(value, key, list, "a list of class indices or names")
    for item in value:
        reader.typed(item, key, (int, str), "class indices or names")
    return list(value)


def _present(reader: _Reader, value: Any) -> Targets:
    options = reader.mapping({} if value is None else value, "targets.present", SECTIONS["targets.present"])
    ignored = options.get("ignore_classes")
    return Targets("present", min_area=reader.number(options.get("min_area", Targets.min_area),
                                                     "targets.present.min_area", 0.0, 1.0),
                   ignore_classes=None if ignored is None else _ignore_classes(reader, ignored,
                                                                               "targets.present.ignore_classes"))


def _masks(reader: _Reader, value: Any) -> Targets:
    options = reader.mapping({"dir": value} if isinstance(value, str) else value, "targets.masks",
                             SECTIONS["targets.masks"], required=("dir",))
    ignored = options.get("ignore_classes")
    return Targets("masks", masks_dir=reader.file(options["dir"], "targets.masks.dir", directory=True),
                   ignore_index=reader.integer(options.get("ignore_index", Targets.ignore_index),
                                               "targets.masks.ignore_index", 0, 65_535),
                   ignore_classes=None if ignored is None else _ignore_classes(reader, ignored,
                                                                               "targets.masks.ignore_classes"))


def _targets(reader: _Reader, value: Any) -> Targets:
    forms = ("top1, {topk: K}, {classes: [...]}, {labels: FILE.csv}, {threshold: P}, or for a segmenter present, "
             "{present: {min_area: A}} or {masks: FOLDER}")
    if value is None:
        return Targets("top1", default=True)
    if value == "top1":
        return Targets("top1")
    if value == "present":
        return Targets("present")
    if not isinstance(value, dict) or len(value) != 1:
        raise reader.fail("targets", f"expected one of {forms}, got {value!r}")
    reader.mapping(value, "targets", SECTIONS["targets"])
    kind, option = next(iter(value.items()))
    if kind == "topk":
        return Targets("topk", k=reader.integer(option, "targets.topk", 1, 1000))
    if kind == "classes":
        reader.typed(option, "targets.classes", list, "a list of class indices or names")
        if not option:
            raise reader.fail("targets.classes", "empty list; name at least one class")
        for item in option:
            reader.typed(item, "targets.classes", (int, str), "class indices or names")
        return Targets("classes", classes=list(option))
    if kind == "labels":
        return Targets("labels", labels_file=reader.file(option, "targets.labels"))
    if kind == "present":
        return _present(reader, option)
    if kind == "masks":
        return _masks(reader, option)
    return Targets("threshold", threshold=reader.number(option, "targets.threshold", 0.0, 1.0))


def _options(reader: _Reader, value: Any, key: str, spec: dict[str, Option]) -> dict[str, Any]:
    """Options of a method or metric, checked against their spec, with defaults filled in."""
    value = {} if value is None else value
    reader.mapping(value, key, tuple(spec))
    for name, given in value.items():
        option, where = spec[name], f"{key}.{name}"
        if option.choices:
            reader.choice(given, where, option.choices)
        elif isinstance(option.default, tuple):
            reader.typed(given, where, list, "a list of integers")
            for item in given:
                reader.integer(item, where, int(option.low), int(option.high))
        elif isinstance(option.default, bool):
            reader.typed(given, where, bool, "true or false")
        elif isinstance(option.default, int):
            reader.integer(given, where, int(option.low), int(option.high))
        else:
            reader.number(given, where, option.low, option.high)
    return defaults(spec) | value


def _methods(reader: _Reader, value: Any, sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`methods` entries are names or {name: {options}}; options may also come as a top-level `name:` section."""
    reader.typed(value, "methods", list, f"a list of methods ({', '.join(METHODS)})")
    if not value:
        raise reader.fail("methods", f"empty list; choose from {', '.join(METHODS)}")
    methods: dict[str, dict[str, Any]] = {}
    for item in value:
        if isinstance(item, str):
            name, options = item, None
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
        else:
            raise reader.fail("methods", f"expected a method name or {{name: {{option: value}}}}, got {item!r}")
        if name not in METHODS:
            close = difflib.get_close_matches(str(name), METHODS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"choose from {', '.join(METHODS)}"
            raise reader.fail("methods", f"unknown method '{name}'; {hint}")
        if name in methods:
            raise reader.fail("methods", f"'{name}' is listed twice")
        key = f"methods.{name}"
        if name in sections:
            if options is not None:
                raise reader.fail(name, "options given twice, here and in methods; keep one")
            options, key = sections[name], name
        methods[name] = _options(reader, options, key, METHODS[name].options)
        problem = METHODS[name].check(methods[name]) if METHODS[name].check else ""
        if problem:
            raise reader.fail(key, problem)
    for name in sections:
        if name not in methods:
            raise reader.fail(name, f"options for a method that is not in methods; add {name} to methods")
    return methods


def _evaluate(reader: _Reader, value: Any) -> Evaluation | None:
    if value is None or value is False:
        return None
    value = {} if value is True else value
    reader.mapping(value, "evaluate", (*SECTIONS["evaluate"], *METRIC_OPTIONS))
    boxes = reader.file(value["boxes"], "evaluate.boxes") if "boxes" in value else None
    default = [m for m in METRICS if (boxes or not METRICS[m].needs_boxes) and not METRICS[m].needs_mask]
    names = value.get("metrics", default)
    reader.typed(names, "evaluate.metrics", list, f"a list of metrics ({', '.join(METRICS)})")
    if not names:
        raise reader.fail("evaluate.metrics", f"empty list; choose from {', '.join(METRICS)}, or drop evaluate")
    for name in names:
        if name not in METRICS:
            close = difflib.get_close_matches(str(name), METRICS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"choose from {', '.join(METRICS)}"
            raise reader.fail("evaluate.metrics", f"unknown metric '{name}'; {hint}")
    if len(set(names)) != len(names):
        raise reader.fail("evaluate.metrics", "a metric is listed twice")
    for name in names:
        if METRICS[name].needs_boxes and boxes is None:
            raise reader.fail("evaluate.boxes", f"{name} needs a boxes file (CSV: image,x0,y0,x1,y1[,class])")
    for name in value:
        if name in METRICS and name not in names:
            raise reader.fail(f"evaluate.{name}", f"options for a metric that is not in evaluate.metrics; add {name}")
    metrics = {name: _options(reader, value.get(name), f"evaluate.{name}", METRICS[name].options) for name in names}
    batch_size = reader.integer(value.get("batch_size", Evaluation.batch_size), "evaluate.batch_size", 1, 4096)
    return Evaluation(metrics, boxes, batch_size)


def _parse(path: Path) -> Any:
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ManifestError(f"{path}: not valid YAML{where} ({getattr(error, 'problem', error)})") from None


def _images(reader: _Reader, value: Any) -> dict[str, Any]:
    """images: root (a folder, with include patterns) or list (a file of paths), and max_pixels."""
    images = reader.mapping(value, "images", SECTIONS["images"])
    if ("root" in images) == ("list" in images):
        raise reader.fail("images", "give exactly one of root (a directory) or list (a file of paths)")
    include = images.get("include", list(Manifest.include))
    reader.typed(include, "images.include", list, "a list of glob patterns")
    for pattern in include:
        reader.typed(pattern, "images.include", str, "glob patterns")
    return {"images_root": reader.file(images["root"], "images.root", directory=True) if "root" in images else None,
            "images_list": reader.file(images["list"], "images.list") if "list" in images else None,
            "include": tuple(include),
            "max_pixels": reader.integer(images.get("max_pixels", Manifest.max_pixels), "images.max_pixels", 1)}


def _overlays(reader: _Reader, value: Any) -> Overlays | None:
    if value is False:
        return None
    options = reader.mapping({} if value is True else value, "output.overlays", SECTIONS["output.overlays"])
    default = Overlays()
    max_side = options.get("max_side", default.max_side)
    return Overlays(
        format=reader.choice(options.get("format", default.format), "output.overlays.format", tuple(OVERLAY_FORMATS)),
        quality=reader.integer(options.get("quality", default.quality), "output.overlays.quality", 1, 100),
        colormap=reader.choice(options.get("colormap", default.colormap), "output.overlays.colormap",
                               tuple(COLORMAPS)),
        alpha=reader.number(options.get("alpha", default.alpha), "output.overlays.alpha", 0.0, 1.0),
        max_side=None if max_side == "original" else reader.integer(max_side, "output.overlays.max_side", 16, 65_535,
                                                                    "a number of pixels or original"))


def _heatmaps(reader: _Reader, value: Any) -> Heatmaps:
    short = not isinstance(value, dict)  # heatmaps: npy, the same as {format: npy}
    options = reader.mapping({"format": value} if short else value, "output.heatmaps", SECTIONS["output.heatmaps"])
    default = Heatmaps()
    return Heatmaps(
        format=reader.choice(options.get("format", default.format),
                             "output.heatmaps" if short else "output.heatmaps.format", (*HEATMAP_FORMATS, "none")),
        size=reader.choice(options.get("size", default.size), "output.heatmaps.size", ("model", "original")))


def _output(reader: _Reader, value: Any) -> dict[str, Any]:
    """output: dir, and what is written there (overlays, heatmaps, the report's thumbnails)."""
    output = reader.mapping(value, "output", SECTIONS["output"], required=("dir",))
    reader.typed(output["dir"], "output.dir", str, "a path")
    thumbnails = output.get("thumbnails", Manifest.thumbnails)
    thumbnails = Manifest.thumbnails if thumbnails is True else thumbnails
    if thumbnails is not False:
        thumbnails = reader.integer(thumbnails, "output.thumbnails", 32, 1024, "a number of pixels or false")
    return {"output_dir": (reader.base / Path(output["dir"]).expanduser()).resolve(),
            "overlays": _overlays(reader, output.get("overlays", {})),
            "heatmaps": _heatmaps(reader, output.get("heatmaps", Heatmaps.format)),
            "thumbnails": thumbnails or None,
            "label_maps": reader.typed(output.get("label_maps", Manifest.label_maps), "output.label_maps", bool,
                                       "true or false")}


def _runtime(reader: _Reader, value: Any) -> dict[str, Any]:
    """runtime: what runs the model (backend, ONNX Runtime's providers, precision) and how much runs at once."""
    runtime = reader.mapping(value or {}, "runtime", SECTIONS["runtime"])
    backend = reader.choice(runtime.get("backend", Manifest.backend), "runtime.backend", tuple(BACKENDS))
    kind = BACKENDS[backend]
    providers = runtime.get("providers", Manifest.providers)
    if providers != "auto":
        reader.typed(providers, "runtime.providers", list, "auto or a list such as [cuda, cpu]")
        for provider in providers:
            if provider in BACKENDS:
                raise reader.fail("runtime.providers", f"{provider} is a backend, not an ONNX Runtime provider; write "
                                                       f"runtime.backend: {provider}")
        if not kind.providers:
            raise reader.fail("runtime.providers", f"{backend} takes no providers (ONNX Runtime's); drop the key")
        if not providers:
            raise reader.fail("runtime.providers", f"empty list; use auto or a list of {', '.join(kind.providers)}")
        for provider in providers:
            reader.choice(provider, "runtime.providers", kind.providers)
    requests = tuple(dict.fromkeys(name for entry in BACKENDS.values() for name in entry.precisions))
    precision = reader.choice(runtime.get("precision", Manifest.precision), "runtime.precision", requests)
    if precision not in kind.precisions:
        serving = [name for name, entry in BACKENDS.items() if precision in entry.precisions]
        raise reader.fail("runtime.precision", f"{precision} runs on {', '.join(serving)} only ({backend} serves "
                                               f"{', '.join(kind.precisions)}); set runtime.backend: {serving[0]}, or "
                                               f"precision {' or '.join(kind.precisions)}")
    return {"backend": backend, "providers": providers, "precision": precision,
            "batch_size": reader.integer(runtime.get("batch_size", Manifest.batch_size), "runtime.batch_size", 1, 4096),
            "workers": reader.integer(runtime.get("workers", Manifest.workers), "runtime.workers", 1, 256),
            "worker_processes": reader.typed(runtime.get("worker_processes", Manifest.worker_processes),
                                             "runtime.worker_processes", bool, "true or false"),
            "memory_budget": reader.size_in_bytes(runtime.get("memory_budget", Manifest.memory_budget),
                                                  "runtime.memory_budget", 64 * 1024**2)}


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate a manifest file; raises ManifestError with a one-line message."""
    path = Path(path).resolve()
    reader = _Reader(path)
    top = reader.mapping(_parse(path), "", (*SECTIONS[""], *METHOD_OPTIONS), required=("model", "images", "methods",
                                                                                        "output"))
    sections = {name: top[name] for name in METHOD_OPTIONS if name in top}
    return Manifest(path=path, model=reader.file(top["model"], "model"), **_images(reader, top["images"]),
                    targets=_targets(reader, top.get("targets")),
                    methods=_methods(reader, top["methods"], sections), **_output(reader, top["output"]),
                    **_runtime(reader, top.get("runtime")), evaluate=_evaluate(reader, top.get("evaluate")))
