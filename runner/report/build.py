"""report.html: a browsable view of an output.dir (the run, a gallery, a large view per image, the faithfulness
table and curves, the error rows), built from index.csv, run.json and the run stamp.

The page opens from disk with no server and no network: its style and script are inlined from the package. The
rows travel as script files under report/ (items-NNNNN.js, and curves-NNNNN.js with evaluate), CHUNK entries
each, that the page loads one after another: a browser lets a file:// page load scripts but not read files, and
a 100,000-image report shows its first rows as soon as the first chunk is in. An entry is one (image, target)
pair, or one image with an error or no target. Building streams index.csv once; memory holds one chunk, the
class labels, up to MAX_ERRORS error rows and the faithfulness sums.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from onnxcam.runner.evaluate.aggregate import FigureTable
from onnxcam.runner.evaluate.metrics import CURVES, METRICS
from onnxcam.runner.outputs.files import OutputDirError, write_atomic
from onnxcam.runner.outputs.index import COLUMNS
from onnxcam.runner.outputs.stamp import STAMP_NAME
from onnxcam.runner.outputs.thumbnails import PHOTO_SUFFIX, THUMBS, photo_thumbnail_path

REPORT_NAME = "report.html"
DATA_DIR = "report"  # the chunks, beside report.html
CHUNK = 2000  # entries per chunk file
MAX_ERRORS = 1000  # error rows listed on the errors tab (the gallery's status filter shows them all)
MAX_REASONS = 1000  # distinct error texts counted; the rest count as "other reasons"
STATUS = {"ok": 0, "error": 1, "no_target": 2}
COLUMN = {name: k for k, name in enumerate(COLUMNS)}
METRIC_NAMES = tuple(METRICS)


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

    def __init__(self):
        self.counts, self.labels, self.class_counts = ReportCounts(), {}, {}
        self.errors: list[list[str]] = []
        self.reasons: dict[str, int] = {}
        self.figures = FigureTable([], list(METRIC_NAMES))
        self.overlay_ext = ""
        self.first_picture = ""  # the key of the first image that was decoded (its thumbnail says if any exist)

    def image(self, row: list[str]) -> None:
        counts, status = self.counts, row[COLUMN["status"]]
        counts.images += 1
        counts.ok += status == "ok"
        counts.no_target += status == "no_target"
        if status != "error":
            self.first_picture = self.first_picture or row[COLUMN["image"]]
            return
        counts.errors += 1
        reason = row[COLUMN["error"]]
        if len(self.errors) < MAX_ERRORS:
            self.errors.append([row[COLUMN["image"]], reason])
        key = reason if reason in self.reasons or len(self.reasons) < MAX_REASONS else "other reasons"
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def entry(self, row: list[str]) -> None:
        self.counts.entries += 1
        classes = {}
        for which in ("pred", "target"):
            if row[COLUMN[f"{which}_class"]]:
                classes[row[COLUMN[f"{which}_class"]]] = row[COLUMN[f"{which}_label"]]
        self.labels |= classes
        for number in classes:  # an entry counts once for its class filter, also when predicted = explained
            self.class_counts[number] = self.class_counts.get(number, 0) + 1

    def row(self, row: list[str]) -> None:
        self.counts.rows += 1
        self.overlay_ext = self.overlay_ext or row[COLUMN["overlay_path"]].rpartition(".")[2]
        if row[COLUMN["status"]] == "ok" and any(row[COLUMN[name]] for name in METRIC_NAMES):
            self.figures.add(dict(zip(COLUMNS, row, strict=True)))


def _number(text: str) -> float | None:
    return float(text) if text else None


def _integer(text: str) -> int | None:
    return int(text) if text else None


def _script(function: str, number: int, data: dict) -> bytes:
    return f"{function}({number},{json.dumps(data, separators=(',', ':'))});\n".encode()


class _ChunkWriter:
    """Entries gathered column by column and written CHUNK at a time as report/items-NNNNN.js (and curves)."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        self.curve_chunks: list[int] = []  # the chunks that have a curves file
        self.methods: list[str] = []  # every method seen, in order; entries name theirs by position here
        self._method_numbers: dict[str, int] = {}
        self._start()

    def _start(self) -> None:
        self.columns = {"img": [], "st": [], "err": {}, "wh": [], "pc": [], "ps": [], "tc": [], "ts": [], "ms": []}
        self.metric_values: list[dict[str, list]] = []
        self.curve_texts: list[dict[str, list[str]]] = []

    def method_number(self, method: str) -> int:
        if method not in self._method_numbers:
            self._method_numbers[method] = len(self.methods)
            self.methods.append(method)
        return self._method_numbers[method]

    def add(self, rows: list[list[str]]) -> None:
        """One entry: the rows of one (image, target), or an image's single error or no-target row."""
        first, columns = rows[0], self.columns
        status = STATUS.get(first[COLUMN["status"]], STATUS["error"])
        if status == STATUS["error"]:
            columns["err"][str(len(columns["img"]))] = first[COLUMN["error"]]
        columns["img"].append(first[COLUMN["image"]])
        columns["st"].append(status)
        columns["wh"] += [_integer(first[COLUMN["width"]]) or 0, _integer(first[COLUMN["height"]]) or 0]
        columns["pc"].append(_integer(first[COLUMN["pred_class"]]))
        columns["ps"].append(_number(first[COLUMN["pred_score"]]))
        columns["tc"].append(_integer(first[COLUMN["target_class"]]))
        columns["ts"].append(_number(first[COLUMN["target_score"]]))
        ok = status == STATUS["ok"]
        columns["ms"].append([self.method_number(row[COLUMN["method"]]) for row in rows] if ok else [])
        metrics, curves = {}, {}
        for name in METRIC_NAMES if ok else ():
            values = [_number(row[COLUMN[name]]) for row in rows]
            if any(value is not None for value in values):
                metrics[name] = values
            if name in CURVES and any(row[COLUMN[f"{name}_curve"]] for row in rows):
                curves[name] = [row[COLUMN[f"{name}_curve"]] for row in rows]
        self.metric_values.append(metrics)
        self.curve_texts.append(curves)
        if len(columns["img"]) == CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.columns["img"]:
            return
        data = dict(self.columns, n=len(self.columns["img"]), m=self._by_metric(self.metric_values))
        write_atomic(self.folder / f"items-{self.count:05d}.js", _script("onnxcamChunk", self.count, data))
        curves = self._by_metric(self.curve_texts)
        if curves:
            self.curve_chunks.append(self.count)
            write_atomic(self.folder / f"curves-{self.count:05d}.js", _script("onnxcamCurves", self.count, curves))
        self.count += 1
        self._start()

    @staticmethod
    def _by_metric(entries: list[dict[str, list]]) -> dict[str, list]:
        """Per entry {metric: values per method} -> {metric: [values or null per entry]}, only metrics present."""
        names = {name for entry in entries for name in entry}
        return {name: [entry.get(name) for entry in entries] for name in sorted(names)}

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


def write_report(output_dir: Path) -> ReportCounts:
    """report.html and report/ for output.dir, from every row of its index.csv (OutputDirError when it has none)."""
    index = output_dir / "index.csv"
    if not index.is_file():
        raise OutputDirError(f"{output_dir}: no index.csv, so not an onnxcam output.dir; give the folder a run wrote")
    folder, chunks = _Folder(), _ChunkWriter(output_dir / DATA_DIR)
    with open(index, encoding="utf-8", newline="") as file:
        reader = csv.reader(file)
        if tuple(next(reader, ())) != COLUMNS:
            raise OutputDirError(f"{index}: not an index of this onnxcam version (columns differ); run the manifest "
                                 "again into a new output.dir")
        group: list[list[str]] = []
        image, target = COLUMN["image"], COLUMN["target_class"]
        for row in reader:
            if len(row) != len(COLUMNS):
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
        if group:
            chunks.add(group)
    chunks.flush()
    chunks.remove_stale()
    write_atomic(output_dir / REPORT_NAME, _page(_head(output_dir, folder, chunks)).encode("utf-8"))
    return folder.counts


def _head(output_dir: Path, folder: _Folder, chunks: _ChunkWriter) -> dict:
    """Everything the page needs besides the chunks."""
    run, stamp = _read_json(output_dir / "run.json"), _read_json(output_dir / STAMP_NAME)
    methods = folder.figures.methods
    metrics = [name for name in METRIC_NAMES if any(entry.figures[name].count for entry in methods.values())]
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
    }


def _page(head: dict) -> str:
    assets = resources.files("onnxcam.runner.report") / "assets"
    data = json.dumps(head, separators=(",", ":")).replace("</", "<\\/")
    return ((assets / "report.html").read_text(encoding="utf-8")
            .replace("/*STYLE*/", (assets / "report.css").read_text(encoding="utf-8"))
            .replace("/*SCRIPT*/", (assets / "report.js").read_text(encoding="utf-8"))
            .replace("/*HEAD*/", data))  # last: the data may hold any text
