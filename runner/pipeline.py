"""The streaming run: list -> decode + preprocess (threads) -> batches through one ORT session -> maps ->
heatmaps, overlays, encode + write (threads) -> index.csv.

Queues are bounded by counts (look-ahead of decoded images, pending writes), so memory does not
grow with the dataset. A bad file or a failed write becomes an error row; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import platform
import signal
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
import onnxruntime as ort
from onnxcam.runner import render, summary
from onnxcam.runner.boxes import pointing_game, read_boxes
from onnxcam.runner.explain_graph import OUTPUTS, GraphInfo, read_graph_info
from onnxcam.runner.faithfulness import METRICS, Row, explanation
from onnxcam.runner.forwards import Cost, Forwards, probabilities
from onnxcam.runner.images import ImageError, ImageRef, decode_image, list_images, walk_images
from onnxcam.runner.index import IndexFile
from onnxcam.runner.manifest import Manifest, ManifestError
from onnxcam.runner.methods import METHODS
from onnxcam.runner.preprocess import Box, to_input
from onnxcam.runner.progress import Progress
from onnxcam.runner.session import ExplainSession, ModelError
from onnxcam.runner.targets import TOP1, TargetPlan

MAX_ERRORS_IN_REPORT = 100
RUN_STAMP = ".onnxcam-run.json"  # what a resumed run must match


@dataclass
class TargetResult:
    target_class: int
    score: float
    maps: dict[str, np.ndarray]
    metrics: dict[str, dict[str, object]] = field(default_factory=dict)  # method -> metric column -> value


@dataclass
class ImageJob:
    """One image from decode to its index rows."""

    ref: ImageRef
    image: np.ndarray | None = None
    tensor: np.ndarray | None = None
    box: Box = (0, 0, 0, 0)
    error: str = ""
    pending: int = 0
    pred: tuple[int, float] | None = None
    results: list[TargetResult] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return (self.image.shape[1], self.image.shape[0]) if self.image is not None else (0, 0)


@dataclass
class RunSummary:
    images: int = 0
    ok: int = 0
    errors: int = 0
    rows: int = 0
    already_done: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    model_seconds: float = 0.0
    provider: str = ""
    error_samples: list[dict[str, str]] = field(default_factory=list)
    table: str = ""  # the evaluation summary, as printed


MISSING_OUTPUT_FIX = {"input_gradients": "was exported with --no-guided; re-export without it",
                      "plain_input_gradients": "was exported without --saliency; re-export with --saliency"}


def _check_model(manifest: Manifest, info: GraphInfo) -> None:
    for name, options in manifest.methods.items():
        method = METHODS[name]
        if method.needs_gap_head and not info.gap_linear_head:
            raise ModelError(f"{manifest.path}: methods: 'cam' needs a model whose head is global-average-pool -> "
                             f"linear, and {manifest.model.name} ({info.model}) is not; use gradcam")
        for output in (*method.needs, method.passes):
            if output in MISSING_OUTPUT_FIX and output not in info.outputs:
                raise ModelError(f"{manifest.path}: methods: '{name}' needs {output}, and {manifest.model.name} "
                                 f"{MISSING_OUTPUT_FIX[output]}")
        if "patch" in options and options["patch"] > min(info.preprocessing.size):
            raise ModelError(f"{manifest.path}: {name}.patch: {options['patch']} is larger than the model input "
                             f"{list(info.preprocessing.size)}; use a smaller patch")


class Run:
    def __init__(self, manifest: Manifest, quiet: bool = False, stream: TextIO | None = None):
        self.manifest, self.quiet, self.stream = manifest, quiet, stream
        try:
            self.info = read_graph_info(manifest.model)
        except Exception as error:  # noqa: BLE001 - a protobuf parse error or missing metadata
            raise ModelError(f"model: {manifest.model}: {str(error).splitlines()[0]}") from None
        _check_model(manifest, self.info)
        self.plan = TargetPlan(manifest.targets, self.info.labels, self.info.output_activation)
        self.methods = list(manifest.methods)
        needed = {output for name in self.methods for output in METHODS[name].needs}
        outputs = ["logits", *(output for output in OUTPUTS[1:] if output in needed)]
        self.session = ExplainSession(manifest.model, outputs, manifest.providers)
        self.evaluation = manifest.evaluate
        self.boxes = {}
        if self.evaluation and self.evaluation.boxes:
            try:
                self.boxes = read_boxes(self.evaluation.boxes, self.info.labels)
            except ValueError as error:
                raise ManifestError(f"{manifest.path}: {error}") from None
        extra = any(METHODS[m].passes for m in self.methods) or (
            self.evaluation and any(METRICS[m].passes for m in self.evaluation.metrics))
        self.forwards = Forwards(manifest.model, manifest.providers, self.info) if extra else None
        self.costs: dict[str, dict[str, Cost]] = {"methods": {}, "metrics": {}}
        self.output_dir = manifest.output_dir
        self.summary = RunSummary(provider=self.session.provider)
        self.identity = self._check_same_run()

    def _check_same_run(self) -> dict[str, str]:
        """Rows in output.dir may only be resumed by a run of the same model file, targets and evaluate settings,
        and with the same options for every method both runs have (adding or dropping a method is fine)."""
        digest = hashlib.sha256()
        with open(self.manifest.model, "rb") as model:
            for block in iter(lambda: model.read(1 << 20), b""):
                digest.update(block)
        targets = self.manifest.targets
        evaluation = self.evaluation
        identity = {"model_sha256": digest.hexdigest(), "targets": json.dumps(
            {"kind": targets.kind, "k": targets.k, "classes": targets.classes, "threshold": targets.threshold,
             "labels": str(targets.labels_file or "")}),
            "evaluate": json.dumps(evaluation and {"metrics": evaluation.metrics, "boxes": str(evaluation.boxes)}),
            "methods": json.dumps(self.manifest.methods)}
        stamp = self.output_dir / RUN_STAMP
        if stamp.exists() and (self.output_dir / "index.csv").exists():
            previous = json.loads(stamp.read_text())
            changed = [key for key in identity if key != "methods" and previous.get(key) != identity[key]]
            before = json.loads(previous.get("methods", "{}"))
            changed += [f"other {name} options" for name, options in self.manifest.methods.items()
                        if name in before and before[name] != options]
            if changed:
                what = {"model_sha256": "another model file", "targets": "other targets",
                        "evaluate": "other evaluate settings"}.get(changed[0], changed[0])
                raise ModelError(f"output.dir: {self.output_dir} holds a run with {what}; resuming would mix "
                                 "them: pick a new output.dir, or delete that one to start over")
        return identity

    # -- listing -------------------------------------------------------------------------------------------

    def _refs(self) -> Iterator[ImageRef]:
        m = self.manifest
        return list_images(m.images_list) if m.images_list else walk_images(m.images_root, m.include)

    def _todo(self, done: set[str]) -> Iterator[ImageRef]:
        seen = set(done)
        for ref in self._refs():
            if ref.key not in seen:
                seen.add(ref.key)
                yield ref

    # -- stages ---------------------------------------------------------------------------------------------

    def _decode(self, ref: ImageRef) -> ImageJob:
        job = ImageJob(ref)
        try:
            job.image = decode_image(ref.path, self.manifest.max_pixels)
            job.tensor, job.box = to_input(job.image, self.info.preprocessing)
        except ImageError as error:
            job.error, job.image = str(error), None
        except Exception as error:  # noqa: BLE001 - whatever a decoder throws, this file becomes an error row
            job.error, job.image = f"cannot decode ({type(error).__name__}: {_one_line(error)})", None
        return job

    def _run_batch(self, batch: list[tuple[ImageJob, int]], pairs: deque) -> list[ImageJob]:
        """Runs (image, target) pairs; returns the images whose every target is now done."""
        start = time.perf_counter()
        try:
            inputs = np.stack([job.tensor for job, _ in batch])
            out = self.session.run(inputs, np.array([target for _, target in batch], np.int64))
        except Exception as error:  # noqa: BLE001 - ORT raises its own types (e.g. out of memory)
            return self._fail(batch, pairs, f"ONNX Runtime failed on this batch ({_one_line(error)})")
        self.summary.model_seconds += time.perf_counter() - start
        scores = probabilities(out["logits"], self.info.output_activation)
        finished, kept, chosen = [], [], []
        for i, (job, target) in enumerate(batch):
            top = int(np.argmax(scores[i]))
            if job.pred is None:
                job.pred = (top, float(scores[i, top]))
            keep = True
            if target == TOP1 and self.plan.needs_scores:
                keep, more = self.plan.follow_up(scores[i])
                job.pending += len(more)
                pairs.extendleft((job, c) for c in reversed(more))
            if keep:
                kept.append(i)
                chosen.append(top if target == TOP1 else target)
            job.pending -= 1
            if job.pending == 0:
                finished.append(job)
        if kept:
            out = {name: value[kept] for name, value in out.items()}
            out |= {"input": inputs[kept], "target": np.array(chosen, np.int64)}
            try:
                results = self._explain(out, scores[kept, chosen])
            except Exception as error:  # noqa: BLE001 - an extra pass can fail too (out of memory on a big batch)
                return self._fail(batch, pairs, f"a method or metric failed on this batch ({_one_line(error)})")
            for k, result in enumerate(results):
                batch[kept[k]][0].results.append(result)
        return finished

    @staticmethod
    def _fail(batch: list[tuple[ImageJob, int]], pairs: deque, message: str) -> list[ImageJob]:
        """Every image of the batch becomes an error row, its other targets dropped; the run goes on."""
        failed = {id(job): job for job, _ in batch}
        for job in failed.values():
            job.error, job.pending = message, 0
        remaining = [(job, target) for job, target in pairs if id(job) not in failed]
        pairs.clear()
        pairs.extend(remaining)
        return list(failed.values())

    def _explain(self, out: dict[str, np.ndarray], scores: np.ndarray) -> list[TargetResult]:
        """Every method's maps (and, with evaluate, their metrics) for the kept (image, class) pairs of a batch."""
        maps = {}
        for name, options in self.manifest.methods.items():
            start, passes = time.perf_counter(), self.forwards.passes if self.forwards else 0
            maps[name] = METHODS[name](out, options, self.forwards)
            cost = self.costs["methods"].setdefault(name, Cost())
            cost.rows += len(scores)
            cost.seconds += time.perf_counter() - start
            cost.passes += (self.forwards.passes if self.forwards else 0) - passes
        results = [TargetResult(int(out["target"][k]), float(scores[k]),
                                {name: maps[name][k].copy() for name in self.methods}) for k in range(len(scores))]
        if self.forwards and self.evaluation:
            size = out["input"].shape[2:]
            pairs = [(result, name) for result in results for name in self.methods]
            rows = [Row(out["input"][k], explanation(maps[name][k], size), result.target_class, result.score)
                    for k, result in enumerate(results) for name in self.methods]
            values = self.evaluation.evaluate(rows, self.forwards, self.costs["metrics"])
            for (result, name), metrics in zip(pairs, values, strict=True):
                result.metrics[name] = metrics
        return results

    def _output_path(self, relative: str) -> Path:
        path = (self.output_dir / relative).resolve()
        if not path.is_relative_to(self.output_dir):
            raise ImageError(f"output path {relative!r} would leave output.dir; rename the file")
        return path

    def _row(self, job: ImageJob, **values) -> dict[str, object]:
        width, height = job.size
        row: dict[str, object] = {"image": job.ref.key, "status": "ok", "width": width or "", "height": height or ""}
        if job.pred is not None:
            row.update(pred_class=job.pred[0], pred_label=self.info.labels[job.pred[0]],
                       pred_score=f"{job.pred[1]:.6g}")
        return row | values

    def _write(self, job: ImageJob) -> list[dict[str, object]]:
        """Heatmaps and overlays of one image (in a worker thread); returns its index rows."""
        if job.error:
            return [self._row(job, status="error", error=job.error)]
        if not job.results:
            return [self._row(job, status="no_target")]
        m, (width, height), rows = self.manifest, job.size, []
        try:
            for result in job.results:
                for name in self.methods:
                    guided = METHODS[name].guided
                    render_map = render.guided_image if guided else render.heatmap
                    values = render_map(result.maps[name], job.box, width, height)
                    stem = f"{job.ref.key}.{name}.{result.target_class}"
                    paths = {"heatmap_path": "", "overlay_path": ""}
                    if m.heatmaps != "none":
                        paths["heatmap_path"] = f"{stem}.{m.heatmaps}"
                        render.write_atomic(self._output_path(paths["heatmap_path"]),
                                            render.encode_heatmap(values, m.heatmaps, guided))
                    if m.overlays is not None:
                        paths["overlay_path"] = f"{stem}.{m.overlays.format}"
                        picture = render.overlay(job.image, values, guided, m.overlays)
                        render.write_atomic(self._output_path(paths["overlay_path"]),
                                            render.encode_image(picture, m.overlays))
                    x, y = render.peak(values, guided)
                    rows.append(self._row(
                        job, target_class=result.target_class, target_label=self.info.labels[result.target_class],
                        target_score=f"{result.score:.6g}", method=name, peak_x=x, peak_y=y, **paths,
                        **self._metric_columns(job, result, name, (x, y))))
        except Exception as error:  # noqa: BLE001 - a full disk or an odd image must not stop the run
            return [self._row(job, status="error", error=f"cannot write outputs ({_one_line(error)})")]
        return rows

    def _metric_columns(self, job: ImageJob, result: TargetResult, method: str, peak: tuple[int, int]
                        ) -> dict[str, str]:
        if not self.evaluation:
            return {}
        values = dict(result.metrics.get(method, {}))
        if "pointing_game" in self.evaluation.metrics:
            values["pointing_game"] = pointing_game(peak, self.boxes.get(job.ref.key, []), result.target_class)
        return {key: "" if value is None else " ".join(f"{v:.4g}" for v in value) if isinstance(value, np.ndarray)
                else f"{value:.6g}" for key, value in values.items()}

    # -- the loop -------------------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        m, summary = self.manifest, self.summary
        start = time.monotonic()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        render.write_atomic(self.output_dir / RUN_STAMP, json.dumps(self.identity).encode())
        index = IndexFile(self.output_dir / "index.csv", self.methods)
        summary.already_done = len(index.done)
        total = sum(1 for _ in self._todo(index.done))
        progress = Progress(total, self.quiet, self.stream)
        todo = self._todo(index.done)
        look_ahead = m.batch_size + 2 * m.workers
        decoding: deque[Future] = deque()
        writing: deque[Future] = deque()
        pairs: deque[tuple[ImageJob, int]] = deque()

        def refill() -> None:
            while len(decoding) < look_ahead:
                ref = next(todo, None)
                if ref is None:
                    return
                decoding.append(decoders.submit(self._decode, ref))

        def collect(block_above: int) -> None:
            while writing and (writing[0].done() or len(writing) > block_above):
                rows = writing.popleft().result()
                index.append(rows)
                failed = rows[0]["status"] == "error"
                summary.images += 1
                summary.errors += failed
                summary.ok += not failed
                summary.rows += len(rows)
                if failed and len(summary.error_samples) < MAX_ERRORS_IN_REPORT:
                    summary.error_samples.append({"image": rows[0]["image"], "error": rows[0]["error"]})
                progress.update(1, int(failed))

        decoders = ThreadPoolExecutor(m.workers, thread_name_prefix="decode")
        writers = ThreadPoolExecutor(m.workers, thread_name_prefix="write")
        try:
            while True:
                refill()
                while len(pairs) < m.batch_size and decoding:
                    job = decoding.popleft().result()
                    refill()
                    if not job.error:
                        try:
                            targets = self.plan.initial(job.ref.key)
                        except KeyError:
                            job.error = f"no row for this image in {m.targets.labels_file.name}"
                    if job.error:
                        writing.append(writers.submit(self._write, job))
                        continue
                    job.pending = len(targets)
                    pairs.extend((job, target) for target in targets)
                if not pairs:
                    break
                batch = [pairs.popleft() for _ in range(min(m.batch_size, len(pairs)))]
                for job in self._run_batch(batch, pairs):
                    writing.append(writers.submit(self._write, job))
                collect(block_above=look_ahead)
            collect(block_above=0)
        except KeyboardInterrupt:
            summary.interrupted = True
            for future in decoding:
                future.cancel()
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C stops at once
            collect(block_above=0)  # keep what is finished; the rest is redone by the next run
        finally:
            decoders.shutdown(wait=False, cancel_futures=True)
            writers.shutdown(wait=True)
            index.close()
            progress.close()
        if self.evaluation:
            self._summarise()
        summary.seconds = time.monotonic() - start
        self._write_report()
        return summary

    def _summarise(self) -> None:
        """summary.csv, the table printed at the end, and the mean curves, over every row of index.csv."""
        metrics = list(self.evaluation.metrics)
        table = summary.summarise(self.output_dir / "index.csv", self.methods, metrics)
        summary.write_summary_csv(self.output_dir / "summary.csv", table, metrics)
        summary.plot_all_curves(self.output_dir / "curves", table)
        self.summary.table = summary.format_table(table, metrics)

    def _write_report(self) -> None:
        s, m = self.summary, self.manifest
        report = {
            "manifest": str(m.path), "model": str(m.model), "model_spec": self.info.model,
            "target_layer": self.info.target_layer, "methods": m.methods, "targets": m.targets.kind,
            "images": s.images, "ok": s.ok, "errors": s.errors, "rows": s.rows,
            "already_done": s.already_done, "interrupted": s.interrupted,
            "wall_s": round(s.seconds, 3), "model_s": round(s.model_seconds, 3),
            "images_per_s": round(s.images / s.seconds, 2) if s.seconds else 0.0,
            "provider": s.provider, "provider_notes": self.session.notes, "batch_size": m.batch_size,
            "workers": m.workers, "error_samples": s.error_samples,
            "evaluate": m.evaluate and {"metrics": m.evaluate.metrics, "boxes": str(m.evaluate.boxes or ""),
                                        "batch_size": m.evaluate.batch_size},
            "cost": {kind: {name: cost.report() for name, cost in costs.items()} for kind, costs in self.costs.items()},
            "extra_passes_s": round(self.forwards.seconds, 3) if self.forwards else 0.0,
            "versions": {"onnxcam": _version(), "onnxruntime": ort.__version__, "numpy": np.__version__,
                         "opencv": cv2.__version__, "python": platform.python_version()},
        }
        render.write_atomic(self.output_dir / "run.json", json.dumps(report, indent=2).encode())


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxcam")
    except PackageNotFoundError:
        return "unknown"
