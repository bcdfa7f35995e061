"""report.html: a browsable view of an output.dir (the run, a gallery, a large view per image, the faithfulness
table and curves, the error rows), built from index.csv, run.json and the run stamp.

The page opens from disk with no server and no network: its style and script are inlined from the package. The
rows travel as script files under report/ (items-NNNNN.js, and curves-NNNNN.js with evaluate), CHUNK entries
each, that the page loads one after another: a browser lets a file:// page load scripts but not read files, and
a 100,000-image report shows its first rows as soon as the first chunk is in. An entry is one (image, target)
pair, or one image with an error or no target. Building streams index.csv once; memory holds one chunk, the
class labels, up to MAX_ERRORS error rows and the faithfulness sums.

A segmenter's index has more columns (its rows explain a class over a region: REGION_FIELDS, and the region metrics);
the columns are read by name from the header, and a classifier's index builds the same files as before they existed.

A run's build continues the last one: .onnxcam-report.json keeps where that build stood at the last whole line of
index.csv (its byte offset, the sums and labels, the chunk still filling), so a resume that appends rows reads
only those and rewrites only the last chunk, the new ones and the page. The files come out as a build of every
row writes them. When the state is missing or unreadable, or index.csv no longer starts with the bytes it
covered (a resume that cut rows rewrites the file), the build reads every row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np
from onnxcam.runner.evaluate.aggregate import Figure, FigureTable, MethodFigures
from onnxcam.runner.evaluate.metrics import CURVES, METRICS
from onnxcam.runner.outputs.files import OutputDirError, write_atomic
from onnxcam.runner.outputs.index import COLUMNS, last_line_end
from onnxcam.runner.outputs.stamp import STAMP_NAME
from onnxcam.runner.outputs.thumbnails import PHOTO_SUFFIX, THUMBS, photo_thumbnail_path

REPORT_NAME = "report.html"
DATA_DIR = "report"  # the chunks, beside report.html
STATE_NAME = ".onnxcam-report.json"  # beside report.html: where the last build stood, for the next to continue
STATE_VERSION = 1
SAMPLE = 1 << 16  # bytes of index.csv's start and of the end of what a state covers, compared before continuing
CHUNK = 2000  # entries per chunk file
MAX_ERRORS = 1000  # error rows listed on the errors tab (the gallery's status filter shows them all)
MAX_REASONS = 1000  # distinct error texts counted; the rest count as "other reasons"
STATUS = {"ok": 0, "error": 1, "no_target": 2}
REGION_FIELDS = ("target_mask", "target_share", "mask_file")  # a segmenter row's region: predicted|given, share, PNG


@dataclass(frozen=True)
class _Layout:
    """index.csv's columns as its header names them: every classifier column, and a segmenter's region columns."""

    header: tuple[str, ...]

    @classmethod
    def of(cls, header: list[str], index: Path) -> _Layout:
        if not set(COLUMNS) <= set(header):
            raise OutputDirError(f"{index}: not an index of this onnxcam version (columns differ); run the manifest "
                                 "again into a new output.dir")
        return cls(tuple(header))

    @cached_property
    def column(self) -> dict[str, int]:
        return {name: k for k, name in enumerate(self.header)}

    @cached_property
    def metrics(self) -> tuple[str, ...]:
        """The metrics this index has columns for, in METRICS' order."""
        return tuple(name for name in METRICS if name in self.header)

    @cached_property
    def regions(self) -> bool:
        """The index has a segmenter's columns (REGION_FIELDS): its entries may have a region."""
        return set(REGION_FIELDS) <= set(self.header)


@dataclass
class ReportCounts:
    images: int = 0
    ok: int = 0
    errors: int = 0
    no_target: int = 0
    rows: int = 0
    entries: int = 0


class _Folder:
    """What the page shows about the folder as a whole: counts, class labels, error rows and reasons, figures."""

    def __init__(self, layout: _Layout):
        self.layout, self.column = layout, layout.column
        self.counts, self.labels, self.class_counts = ReportCounts(), {}, {}
        self.errors: list[list[str]] = []
        self.reasons: dict[str, int] = {}
        self.figures = FigureTable([], list(layout.metrics))
        self.overlay_ext = ""
        self.first_picture = ""  # the key of the first image that was decoded (its thumbnail says if any exist)
        self.region_entries = 0  # entries with a region (a segmenter's): the page shows regions when there are any

    def image(self, row: list[str]) -> None:
        column = self.column
        counts, status = self.counts, row[column["status"]]
        counts.images += 1
        counts.ok += status == "ok"
        counts.no_target += status == "no_target"
        if status != "error":
            self.first_picture = self.first_picture or row[column["image"]]
            return
        counts.errors += 1
        reason = row[column["error"]]
        if len(self.errors) < MAX_ERRORS:
            self.errors.append([row[column["image"]], reason])
        key = reason if reason in self.reasons or len(self.reasons) < MAX_REASONS else "other reasons"
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def entry(self, row: list[str]) -> None:
        column = self.column
        self.counts.entries += 1
        classes = {}
        for which in ("pred", "target"):
            if row[column[f"{which}_class"]]:
                classes[row[column[f"{which}_class"]]] = row[column[f"{which}_label"]]
        self.labels |= classes
        if self.layout.regions and row[column["target_mask"]]:  # a segmenter's entry explains one class of the
            self.region_entries += 1  # image, whose predicted class is every entry's: the filter picks the explained
            classes = {number: text for number, text in classes.items() if number == row[column["target_class"]]}
        for number in classes:  # an entry counts once for its class filter, also when predicted = explained
            self.class_counts[number] = self.class_counts.get(number, 0) + 1

    def row(self, row: list[str]) -> None:
        column = self.column
        self.counts.rows += 1
        self.overlay_ext = self.overlay_ext or row[column["overlay_path"]].rpartition(".")[2]
        if row[column["status"]] == "ok" and any(row[column[name]] for name in self.layout.metrics):
            self.figures.add(dict(zip(self.layout.header, row, strict=True)))

    def state(self) -> dict:
        """The counts, labels, error rows and sums so far, as JSON values (floats written exactly)."""
        figures = {method: {"figures": {name: asdict(figure) for name, figure in entry.figures.items()},
                            "curves": {name: curve.tolist() for name, curve in entry.curves.items()},
                            "curve_counts": entry.curve_counts} for method, entry in self.figures.methods.items()}
        state = {"counts": asdict(self.counts), "labels": self.labels, "class_counts": self.class_counts,
                 "errors": self.errors, "reasons": self.reasons, "figures": figures, "overlay_ext": self.overlay_ext,
                 "first_picture": self.first_picture}
        if self.layout.regions:
            state["region_entries"] = self.region_entries
        return state

    @classmethod
    def restore(cls, layout: _Layout, state: dict) -> _Folder:
        folder = cls(layout)
        folder.counts = ReportCounts(**state["counts"])
        folder.labels, folder.class_counts = dict(state["labels"]), dict(state["class_counts"])
        folder.errors, folder.reasons = list(state["errors"]), dict(state["reasons"])
        folder.overlay_ext, folder.first_picture = str(state["overlay_ext"]), str(state["first_picture"])
        folder.region_entries = int(state["region_entries"]) if layout.regions else 0
        for method, entry in state["figures"].items():
            if list(entry["figures"]) != list(layout.metrics):
                raise ValueError("the state's metrics differ")
            folder.figures.methods[method] = MethodFigures(
                {name: Figure(**figure) for name, figure in entry["figures"].items()},
                {name: np.array(curve, np.float64) for name, curve in entry["curves"].items()},
                dict(entry["curve_counts"]))
        return folder


def _number(text: str) -> float | None:
    return float(text) if text else None


def _integer(text: str) -> int | None:
    return int(text) if text else None


def _chunk_name(kind: str, number: int) -> str:
    return f"{kind}-{number:05d}.js"


def _script(function: str, number: int, data: dict) -> bytes:
    return f"{function}({number},{json.dumps(data, separators=(',', ':'))});\n".encode()


class _ChunkWriter:
    """Entries gathered column by column and written CHUNK at a time as report/items-NNNNN.js (and curves)."""

    def __init__(self, folder: Path, layout: _Layout):
        self.folder, self.count, self.layout, self.column = folder, 0, layout, layout.column
        self.curve_chunks: list[int] = []  # the chunks that have a curves file
        self.methods: list[str] = []  # every method seen, in order; entries name theirs by position here
        self._method_numbers: dict[str, int] = {}
        self._start()

    def _start(self) -> None:
        self.columns = {"img": [], "st": [], "err": {}, "wh": [], "pc": [], "ps": [], "tc": [], "ts": [], "ms": []}
        if self.layout.regions:  # region kind, share of the pixels, mask PNG
            self.columns |= {"rk": [], "rs": [], "rf": []}
        self.metric_values: list[dict[str, list]] = []
        self.curve_texts: list[dict[str, list[str]]] = []

    def method_number(self, method: str) -> int:
        if method not in self._method_numbers:
            self._method_numbers[method] = len(self.methods)
            self.methods.append(method)
        return self._method_numbers[method]

    def add(self, rows: list[list[str]]) -> None:
        """One entry: the rows of one (image, target), or an image's single error or no-target row."""
        first, columns, column = rows[0], self.columns, self.column
        status = STATUS.get(first[column["status"]], STATUS["error"])
        if status == STATUS["error"]:
            columns["err"][str(len(columns["img"]))] = first[column["error"]]
        columns["img"].append(first[column["image"]])
        columns["st"].append(status)
        columns["wh"] += [_integer(first[column["width"]]) or 0, _integer(first[column["height"]]) or 0]
        columns["pc"].append(_integer(first[column["pred_class"]]))
        columns["ps"].append(_number(first[column["pred_score"]]))
        columns["tc"].append(_integer(first[column["target_class"]]))
        columns["ts"].append(_number(first[column["target_score"]]))
        ok = status == STATUS["ok"]
        columns["ms"].append([self.method_number(row[column["method"]]) for row in rows] if ok else [])
        if self.layout.regions:
            columns["rk"].append(first[column["target_mask"]] or None)
            columns["rs"].append(_number(first[column["target_share"]]))
            columns["rf"].append(first[column["mask_file"]] or None)
        metrics, curves = {}, {}
        for name in self.layout.metrics if ok else ():
            values = [_number(row[column[name]]) for row in rows]
            if any(value is not None for value in values):
                metrics[name] = values
            if name in CURVES and any(row[column[f"{name}_curve"]] for row in rows):
                curves[name] = [row[column[f"{name}_curve"]] for row in rows]
        self.metric_values.append(metrics)
        self.curve_texts.append(curves)
        if len(columns["img"]) == CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.columns["img"]:
            return
        data = dict(self.columns, n=len(self.columns["img"]), m=self._by_metric(self.metric_values))
        write_atomic(self.folder / _chunk_name("items", self.count), _script("onnxcamChunk", self.count, data))
        curves = self._by_metric(self.curve_texts)
        if curves:
            self.curve_chunks.append(self.count)
            write_atomic(self.folder / _chunk_name("curves", self.count), _script("onnxcamCurves", self.count, curves))
        self.count += 1
        self._start()

    @staticmethod
    def _by_metric(entries: list[dict[str, list]]) -> dict[str, list]:
        """Per entry {metric: values per method} -> {metric: [values or null per entry]}, only metrics present."""
        names = {name for entry in entries for name in entry}
        return {name: [entry.get(name) for entry in entries] for name in sorted(names)}

    def state(self) -> dict:
        """Where the writer stands: the chunks written, the methods seen, the entries of the chunk still filling."""
        return {"count": self.count, "curve_chunks": self.curve_chunks, "methods": self.methods,
                "columns": self.columns, "metric_values": self.metric_values, "curve_texts": self.curve_texts}

    @classmethod
    def restore(cls, folder: Path, layout: _Layout, state: dict) -> _ChunkWriter:
        """The writer a state describes (ValueError when a chunk it wrote is gone)."""
        chunks = cls(folder, layout)
        chunks.count, chunks.curve_chunks = int(state["count"]), list(state["curve_chunks"])
        for method in state["methods"]:
            chunks.method_number(method)
        if list(state["columns"]) != list(chunks.columns):
            raise ValueError("the state's columns differ")
        chunks.columns, chunks.metric_values, chunks.curve_texts = (state["columns"], state["metric_values"],
                                                                    state["curve_texts"])
        written = [_chunk_name("items", k) for k in range(chunks.count)]
        written += [_chunk_name("curves", k) for k in chunks.curve_chunks]
        if not all((folder / name).is_file() for name in written):
            raise ValueError("a chunk is gone")
        return chunks

    def remove_stale(self) -> None:
        """Chunks of an earlier, longer build."""
        for path in self.folder.glob("*-*.js"):
            stem = path.stem.split("-")[-1]
            if stem.isdigit() and int(stem) >= self.count:
                path.unlink(missing_ok=True)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe_targets(stamp: dict) -> str:
    try:
        targets = json.loads(stamp.get("targets", "{}"))
    except ValueError:
        return ""
    kind = targets.get("kind", "")
    return {"top1": "top-1", "topk": f"top-{targets.get('k')}", "threshold": f"score ≥ {targets.get('threshold')}",
            "classes": "classes " + ", ".join(map(str, targets.get("classes", []))),
            "labels": f"labels file {Path(targets.get('labels', '')).name}"}.get(kind, kind)


def _photo_base(output_dir: Path, run: dict) -> str:
    """Where the page finds the photographs, as a URL path relative to output.dir ('' when unknown)."""
    base = run.get("images_base")
    if not base:
        return ""
    try:
        return Path(os.path.relpath(base, output_dir)).as_posix().rstrip("/") + "/"
    except ValueError:  # another drive
        return Path(base).as_uri() + "/"


def _run_facts(run: dict, stamp: dict) -> dict:
    """What the page's header shows about the last run (run.json) and the whole folder (the stamp)."""
    try:
        methods = list(json.loads(stamp.get("methods", "{}")))
    except ValueError:
        methods = []
    keep = ("model", "model_spec", "target_layer", "provider", "images", "already_done", "wall_s", "images_per_s",
            "started", "finished", "interrupted", "batch_size", "workers", "worker_processes", "manifest")
    facts = {key: run[key] for key in keep if key in run}
    if "model" in facts:
        facts["model"] = Path(facts["model"]).name
    facts["methods"] = methods or run.get("methods") and list(run["methods"]) or []
    facts["targets"] = _describe_targets(stamp) or run.get("targets", "")
    facts["versions"] = run.get("versions", {})
    return facts


class _Span(io.RawIOBase):
    """The bytes [start, end) of an open binary file: a text reader on it stops at `end`."""

    def __init__(self, file: BinaryIO, start: int, end: int):
        super().__init__()
        file.seek(start)
        self.file, self.left = file, end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = self.file.readinto(memoryview(buffer)[:min(len(buffer), self.left)])
        self.left -= size
        return size


class _Build:
    """A pass over index.csv: the folder's sums, the chunks, the (image, target) group still open, and the byte
    offset read up to."""

    def __init__(self, layout: _Layout, folder: _Folder, chunks: _ChunkWriter, group: list[list[str]], position: int):
        self.layout, self.folder, self.chunks, self.group, self.position = layout, folder, chunks, group, position

    @classmethod
    def new(cls, data: Path, layout: _Layout) -> _Build:
        """A build that reads every row."""
        return cls(layout, _Folder(layout), _ChunkWriter(data, layout), [], 0)

    def read(self, file: BinaryIO, index: Path, end: int) -> bool:
        """The rows from `position` up to byte `end` (the header first, at 0); True when the last row is whole."""
        text = io.TextIOWrapper(io.BufferedReader(_Span(file, self.position, end), 1 << 20), encoding="utf-8",
                                newline="")
        reader = csv.reader(text)
        if self.position == 0:
            next(reader, None)  # the header (_header read it)
        self.position = end
        folder, chunks, group, width = self.folder, self.chunks, self.group, len(self.layout.header)
        image, target = self.layout.column["image"], self.layout.column["target_class"]
        row: list[str] = list(self.layout.header)
        for row in reader:
            if len(row) != width:
                continue  # the torn last line of a run still writing
            new_image = not group or row[image] != group[0][image]
            if group and (new_image or row[target] != group[0][target]):
                chunks.add(group)
                group = []
            if new_image:
                folder.image(row)
            if not group:
                folder.entry(row)
            folder.row(row)
            group.append(row)
        self.group = group
        return len(row) == width

    def finish(self) -> None:
        if self.group:
            self.chunks.add(self.group)
        self.chunks.flush()
        self.chunks.remove_stale()

    def state(self, covered: dict) -> dict:
        return {"version": STATE_VERSION, "limits": _limits(self.layout), "index": covered,
                "folder": self.folder.state(), "chunks": self.chunks.state(), "group": self.group}


def _limits(layout: _Layout) -> dict:
    """What a build's files depend on besides the rows: a state made under other limits is not continued."""
    return {"chunk": CHUNK, "errors": MAX_ERRORS, "reasons": MAX_REASONS, "columns": list(layout.header)}


def _header(file: BinaryIO, index: Path) -> _Layout:
    """index.csv's columns, from its first line."""
    file.seek(0)
    return _Layout.of(next(csv.reader([file.readline().decode("utf-8")]), []), index)


def _covered(file: BinaryIO, end: int, stamp: bytes) -> dict:
    """What a state records of index.csv's first `end` bytes: which file, the digests of its start and of the end
    of those bytes, and the run stamp's digest."""
    info = os.fstat(file.fileno())

    def digest(start: int, stop: int) -> str:
        file.seek(start)
        return hashlib.sha256(file.read(stop - start)).hexdigest()

    return {"end": end, "file": [info.st_dev, info.st_ino], "start": digest(0, min(SAMPLE, end)),
            "tail": digest(max(0, end - SAMPLE), end), "stamp": hashlib.sha256(stamp).hexdigest()}


def _continued(output_dir: Path, layout: _Layout, file: BinaryIO, end: int, stamp: bytes) -> _Build | None:
    """The build STATE_NAME describes, when index.csv still starts with the bytes it covered; else None."""
    try:
        state = json.loads((output_dir / STATE_NAME).read_text(encoding="utf-8"))
        if state["version"] != STATE_VERSION or state["limits"] != _limits(layout):
            return None
        covered = int(state["index"]["end"])
        if covered > end or state["index"] != _covered(file, covered, stamp):
            return None
        return _Build(layout, _Folder.restore(layout, state["folder"]),
                      _ChunkWriter.restore(output_dir / DATA_DIR, layout, state["chunks"]),
                      [list(row) for row in state["group"]], covered)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, or not a state of this version
        return None


def write_report(output_dir: Path, incremental: bool = False) -> ReportCounts:
    """report.html and report/ for output.dir, from every row of its index.csv (OutputDirError when it has none).
    `incremental` continues the build STATE_NAME describes, reading only the rows appended since; the
    files are the same as a build that reads every row writes (the page's build time aside)."""
    index = output_dir / "index.csv"
    if not index.is_file():
        raise OutputDirError(f"{output_dir}: no index.csv, so not an onnxcam output.dir; give the folder a run wrote")
    data, stamp = output_dir / DATA_DIR, output_dir / STAMP_NAME
    stamp_bytes = stamp.read_bytes() if stamp.is_file() else b""
    with open(index, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        end = last_line_end(file, size)
        layout = _header(file, index)
        build = (incremental and _continued(output_dir, layout, file, end, stamp_bytes)) or _Build.new(data, layout)
        whole = build.read(file, index, end)
        state = json.dumps(build.state(_covered(file, end, stamp_bytes)), separators=(",", ":")) if whole else None
        build.read(file, index, size)  # a torn last line: shown if whole enough, never part of the state
    build.finish()
    write_atomic(output_dir / REPORT_NAME, _page(_head(output_dir, build.folder, build.chunks)).encode("utf-8"))
    if state is None:  # the last whole line ends inside a field (a torn row holding a line break): read all next time
        (output_dir / STATE_NAME).unlink(missing_ok=True)
    else:
        write_atomic(output_dir / STATE_NAME, state.encode("utf-8"))
    return build.folder.counts


def _head(output_dir: Path, folder: _Folder, chunks: _ChunkWriter) -> dict:
    """Everything the page needs besides the chunks."""
    run, stamp = _read_json(output_dir / "run.json"), _read_json(output_dir / STAMP_NAME)
    methods = folder.figures.methods
    metrics = [name for name in folder.layout.metrics if any(entry.figures[name].count for entry in methods.values())]
    thumbnails = bool(folder.first_picture) and (output_dir / photo_thumbnail_path(folder.first_picture)).is_file()
    return {
        "title": f"{output_dir.parent.name}/{output_dir.name}",
        "built": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": _run_facts(run, stamp), "counts": folder.counts.__dict__, "methods": chunks.methods,
        "metrics": metrics, "higherIsBetter": {name: METRICS[name].higher_is_better for name in metrics},
        "curves": [name for name in CURVES if name in metrics],
        "labels": folder.labels, "classCounts": folder.class_counts, "chunks": chunks.count, "chunkSize": CHUNK,
        "curveChunks": chunks.curve_chunks,
        "dataDir": DATA_DIR, "thumbs": THUMBS if thumbnails else "", "photoSuffix": PHOTO_SUFFIX,
        "overlayExt": folder.overlay_ext, "photoBase": _photo_base(output_dir, run),
        "summary": {method: {name: [entry.figures[name].mean, entry.figures[name].std, entry.figures[name].count]
                             for name in metrics if entry.figures[name].count} for method, entry in methods.items()},
        "meanCurves": {name: {method: [round(float(v), 5) for v in curve] for method, entry in methods.items()
                              if (curve := entry.mean_curve(name)) is not None} for name in CURVES if name in metrics},
        "errors": folder.errors, "reasons": sorted(folder.reasons.items(), key=lambda item: -item[1])[:50],
    } | ({"regions": True} if folder.region_entries else {})


def _page(head: dict) -> str:
    assets = resources.files("onnxcam.runner.report") / "assets"
    data = json.dumps(head, separators=(",", ":")).replace("</", "<\\/")
    return ((assets / "report.html").read_text(encoding="utf-8")
            .replace("/*STYLE*/", (assets / "report.css").read_text(encoding="utf-8"))
            .replace("/*SCRIPT*/", (assets / "report.js").read_text(encoding="utf-8"))
            .replace("/*HEAD*/", data))  # last: the data may hold any text
