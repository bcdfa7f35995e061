"""A run of a manifest: set-up, then an engine schedules the stages, then the reports.

Set-up checks everything a user can get wrong before any work starts: the model serves the methods
(ModelError), the manifest's targets and boxes fit the model (ManifestError), output.dir is free, writable and
holds no other run's results (OutputDirError). The run is the driver: it alone appends to index.csv, adds up
costs and shows progress, whichever engine computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from onnxcam.runner.config import Manifest
from onnxcam.runner.costs import Costs
from onnxcam.runner.engines import Engine
from onnxcam.runner.engines.registry import ENGINES, EngineKind, EngineSetup
from onnxcam.runner.evaluate import aggregate, curves
from onnxcam.runner.evaluate.metrics import METRICS
from onnxcam.runner.inputs.listing import ImageRef, list_images, walk_images
from onnxcam.runner.methods import METHODS, index_names
from onnxcam.runner.model.backend import Backend, ModelError
from onnxcam.runner.model.graph import GraphInfo, read_graph_info
from onnxcam.runner.model.registry import open_backend
from onnxcam.runner.outputs import run_json
from onnxcam.runner.outputs.files import OutputDirError, clear_partials
from onnxcam.runner.outputs.index import COLUMNS, SEGMENTATION_COLUMNS, IndexFile
from onnxcam.runner.outputs.lock import RunLock
from onnxcam.runner.outputs.run_json import Tally
from onnxcam.runner.outputs.stamp import check_stamp, run_identity, write_stamp
from onnxcam.runner.progress import Progress
from onnxcam.runner.report.build import REPORT_NAME, write_report
from onnxcam.runner.stages import build_stages, output_sets

MAX_ERRORS_IN_REPORT = 100
MISSING_OUTPUT_FIX = {"input_gradients": "was exported with --no-guided; re-export without it",
                      "plain_input_gradients": "was exported without --saliency; re-export with --saliency"}


def check_model(manifest: Manifest, info: GraphInfo) -> None:
    """Every method of the manifest can run on this explain graph (ModelError naming the fix if not)."""
    for name, options in manifest.methods.items():
        method = METHODS[name]
        if info.task == "segmentation" and method.not_for_segmenters:
            raise ModelError(f"{manifest.path}: methods: '{name}' cannot explain a segmenter "
                             f"({manifest.model.name}): {method.not_for_segmenters}")
        if method.needs_gap_head and not info.gap_linear_head:
            raise ModelError(f"{manifest.path}: methods: 'cam' needs a model whose head is global-average-pool -> "
                             f"linear, and {manifest.model.name} ({info.model}) is not; use gradcam")
        for output in (*method.outputs_needed(options), method.extra_pass_output):
            if output in MISSING_OUTPUT_FIX and output not in info.outputs:
                raise ModelError(f"{manifest.path}: methods: '{name}' needs {output}, and {manifest.model.name} "
                                 f"{MISSING_OUTPUT_FIX[output]}")
        problem = method.model_check(options, info, manifest.model) if method.model_check else ""
        if problem:
            raise ModelError(f"{manifest.path}: methods: '{name}': {problem}")
        if "patch" in options and options["patch"] > min(info.preprocessing.size):
            raise ModelError(f"{manifest.path}: {name}.patch: {options['patch']} is larger than the model input "
                             f"{list(info.preprocessing.size)}; use a smaller patch")
    for name in manifest.evaluate.metrics if manifest.evaluate else ():  # and every metric
        if METRICS[name].needs_mask and info.task != "segmentation":
            raise ModelError(f"{manifest.path}: evaluate.metrics: '{name}' scores a segmenter's region, and "
                             f"{manifest.model.name} is a classifier; drop {name}")


class Run:
    """`backend` replaces the manifest's (tests); `open_model` opens the manifest's (model/registry.py's open_backend
    unless a test passes another); `engine` names the entry of `engines` (engines/registry.py's ENGINES) that runs
    the work, with its `settings` (None: the entry's defaults).

    Building it checks what is cheap to check (the model serves the methods, the targets and boxes fit it); the
    engine, with its model sessions or its Ray connection, is built once `opened()` holds output.dir's lock, so a
    run on a folder another run holds stops before it loads a model."""

    def __init__(self, manifest: Manifest, quiet: bool = False, stream: TextIO | None = None,
                 backend: Backend | None = None, engine: str = "local", settings: object = None,
                 open_model: Callable[..., Backend] = open_backend, engines: Mapping[str, EngineKind] = ENGINES):
        self.manifest, self.quiet, self.stream = manifest, quiet, stream
        self.backend, self.open_model = backend, open_model
        self.engine_kind = engines[engine]
        try:
            self.info = read_graph_info(manifest.model)
        except Exception as error:  # noqa: BLE001 - a protobuf parse error or missing metadata
            raise ModelError(f"model: {manifest.model}: {str(error).splitlines()[0]}") from None
        check_model(manifest, self.info)
        self.engine_kind.check(manifest)  # its package, and the backend's where the backend runs in this process
        self.settings = self.engine_kind.settings() if settings is None else settings
        build_stages(manifest, self.info, None)  # the manifest's targets and boxes, checked before any model loads
        self._engine: Engine | None = None
        self.methods = index_names(manifest.methods)
        self.output_dir = manifest.output_dir
        self.identity = run_identity(manifest)
        self.index: IndexFile | None = None
        self.tally = Tally()

    @property
    def engine(self) -> Engine:
        """The engine, built on first use (`opened()` uses it once it holds the lock)."""
        if self._engine is None:
            self._engine = self._start_engine()
        return self._engine

    def _start_engine(self) -> Engine:
        return self.engine_kind.build(EngineSetup(self.manifest, self.info, self._open_backend, self.settings))

    def _open_backend(self) -> Backend:
        """The model backend, in this process: the one a test passed, or the manifest's."""
        m = self.manifest
        return self.backend or self.open_model(m.model, m.backend, providers=m.providers,
                                               output_sets=output_sets(m, self.info), precision=m.precision,
                                               workers=m.workers)

    def _close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()

    @property
    def provider(self) -> str:
        """What runs the model: the backend's provider, or the Ray actors' (as they reported once they ran)."""
        return self.engine.provider

    @property
    def precision(self) -> str:
        """What the model computes in (f32, bf16): the backend's, or the Ray actors'."""
        return self.engine.precision

    @property
    def notes(self) -> list[str]:
        """Why it runs there, printed before the run."""
        return self.engine.notes

    def _refs(self) -> Iterator[ImageRef]:
        m = self.manifest
        return list_images(m.images_list) if m.images_list else walk_images(m.images_root, m.include)

    def _todo(self, done: set[str]) -> Iterator[ImageRef]:
        """Listed images not done yet, each once (memory grows only with the keys of images not done)."""
        seen: set[str] = set()
        for ref in self._refs():
            if ref.key not in done and ref.key not in seen:
                seen.add(ref.key)
                yield ref

    @contextmanager
    def opened(self) -> Iterator[Run]:
        """Holds output.dir for the run: its lock, the stamp check, the engine (built here, inside the lock) and the
        resumed index. Every problem with the folder raises OutputDirError here, before any model loads."""
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise OutputDirError(f"output.dir: {self.output_dir} is a file, not a folder; pick another output.dir")
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputDirError(f"output.dir: {self.output_dir}: cannot create it ({error.strerror or error}); "
                                 "pick a folder you can write to") from None
        try:
            with RunLock(self.output_dir):
                clear_partials(self.output_dir)  # a killed run's half-written files
                check_stamp(self.output_dir, self.identity)
                self.engine  # noqa: B018 - model sessions or Ray, now that the folder is this run's
                self.index = IndexFile(self.output_dir / "index.csv", self.methods,
                                       SEGMENTATION_COLUMNS if self.info.task == "segmentation" else COLUMNS)
                try:
                    write_stamp(self.output_dir, self.identity)
                    yield self
                finally:
                    self.index.close()
                    self.index = None
                    self._close_engine()  # inside the lock: no worker of this run writes once it is released
                    clear_partials(self.output_dir)  # those of workers that died (a --ray run)
        finally:
            self._close_engine()  # also when output.dir refused the run

    def run(self) -> Tally:
        """Runs every image not done yet; opens output.dir first unless `opened()` already holds it."""
        if self.index is None:
            with self.opened():
                return self.run()
        start, self.tally.started = time.monotonic(), time.time()
        self.tally.already_done = len(self.index.done)
        self.progress = Progress(sum(1 for _ in self._todo(self.index.done)), self.quiet, self.stream)
        try:
            self.tally.interrupted = self.engine.run(self._todo(self.index.done), self)
        finally:
            self.index.flush()
            self.progress.close()
        if self.manifest.evaluate:
            self._summarise()
        self.tally.seconds = time.monotonic() - start
        run_json.write_run_json(self)
        try:
            write_report(self.output_dir, incremental=True)
            self.tally.report_path = str(self.output_dir / REPORT_NAME)
        except OSError as error:  # the rows are safe in index.csv; `onnxcam report` writes it later
            self.tally.report_path = f"not written ({error.strerror or error}); run onnxcam report {self.output_dir}"
        return self.tally

    # -- the sink: what the engine hands back ----------------------------------------------------------------

    def add_rows(self, rows: list[dict[str, object]]) -> None:
        self.index.append(rows)
        tally, failed = self.tally, rows[0]["status"] == "error"
        tally.images += 1
        tally.errors += failed
        tally.ok += not failed
        tally.rows += len(rows)
        if self.info.task == "segmentation":
            tally.regions += len({row["target_class"] for row in rows if row["status"] == "ok"})
        if failed and len(tally.error_samples) < MAX_ERRORS_IN_REPORT:
            tally.error_samples.append({"image": rows[0]["image"], "error": rows[0]["error"]})
        self.progress.update(1, int(failed))

    def add_costs(self, costs: Costs) -> None:
        self.tally.costs.add(costs)

    def _summarise(self) -> None:
        """summary.csv, the table printed at the end, and the mean curves, over every row of index.csv."""
        metrics = list(self.manifest.evaluate.metrics)
        table = aggregate.read_figures(self.output_dir / "index.csv", self.methods, metrics)
        aggregate.write_summary_csv(self.output_dir / "summary.csv", table, metrics)
        curves.plot_all_curves(self.output_dir / "curves", table)
        self.tally.table = aggregate.format_table(table, metrics)
