"""The Ray Data engine (`onnxcam run --ray`): a multi-GPU server, or a Ray cluster the user already runs.

The driver (the run) lists the images still to do and hands them to Ray Data as a dataset of (key, path); a pool
of actors, one per GPU (CPU actors without GPUs, or with OpenVINO), does the work and the rows stream back to the
driver, which stays the only writer of index.csv. Each actor builds its model backend once, then runs the
local engine's pipeline (read, explain, write) over every chunk of images it is handed, writing heatmaps and
overlays itself, atomically, into output.dir (a folder every node sees at the same path).

Failures: Ray restarts an actor whose process died and retries its chunk. A ledger actor counts, per image, the
starts that never finished: a chunk holding an image that was in flight when a worker died runs one image at a
time, so the image to blame is found, and an image that was in flight `max_tries` times becomes an error row
instead of being tried again. The driver drops the rows of an image it already has, so a retried chunk never
adds a row twice; a dead process's half-written files are in output.dir's scratch folder, which the run clears
once the actors are gone.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import resource
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import ray
import ray.data
from onnxcam.runner.config import Manifest, ManifestError
from onnxcam.runner.costs import Costs
from onnxcam.runner.engines import EngineError, Sink
from onnxcam.runner.engines.local import LocalEngine
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.model.backend import ORT_NAMES, Backend, ModelError
from onnxcam.runner.model.cuda import cuda_unavailable
from onnxcam.runner.model.graph import GraphInfo, read_graph_info
from onnxcam.runner.model.registry import BACKENDS, open_backend
from onnxcam.runner.outputs.files import SCRATCH
from onnxcam.runner.stages import build_stages, output_sets
from onnxcam.runner.stages.items import DecodedImage, ImageResult
from ray._private.services import canonicalize_bootstrap_address
from ray._raylet import AuthenticationTokenLoader, Config, InnerGcsClient
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

SETUP_ERROR = "onnxcam worker set-up failed: "  # marks a worker's one-line reason inside Ray's error text
AUTH_MODE = "RAY_AUTH_MODE"  # Ray's switch for token authentication: token, or disabled
CHUNK_BATCHES = 8  # images per Ray task, in model batches: enough to keep an actor's pipeline full


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None  # None: RAY_ADDRESS if set, else a local Ray started for the run
    max_tries: int = 3  # times an image may be in flight when its worker dies before it becomes an error row
    worker: type | None = None  # the actor class; None: ExplainWorker (a test passes one that crashes on cue)


@dataclass(frozen=True)
class ActorPlan:
    count: int
    cpus: float  # per actor: its ONNX Runtime threads (OpenVINO: its cores, some kept for reading and writing)
    gpus: int  # per actor: 1 (its own GPU) or 0
    providers: tuple[str, ...]  # ONNX Runtime's providers for the actor; ("cuda",) admits no fallback; () none

    def describe(self) -> str:
        kind = "GPU" if self.gpus else "CPU"
        return f"{self.count} {kind} actor{'s' * (self.count != 1)} ({self.cpus:g} CPU{'s' * (self.cpus != 1)} each)"


def plan_actors(nodes: list[dict[str, float]], providers: str | list[str], where: str, backend: str = Manifest.backend
                ) -> ActorPlan:
    """One actor per GPU of the cluster (each with its node's CPUs per GPU), or without GPUs, or with a backend that
    runs on CPUs only, CPU actors as large as the smallest node's CPUs, as many as fit (one per node when the nodes are
    alike). `nodes` are the alive nodes' resources; `where` names the manifest for errors."""
    kind = BACKENDS[backend]  # one that runs on Ray actors: ENGINES' entry checked that before
    cpu = ("cpu",) if kind.providers else ()
    gpu_nodes = [node for node in nodes if node.get("GPU", 0) >= 1] if kind.gpu else []
    if gpu_nodes:
        cpus = min(node.get("CPU", 0) / int(node["GPU"]) for node in gpu_nodes)
        cpus = float(int(cpus)) if cpus >= 1 else cpus
        wants_cuda = providers == "auto" or "cuda" in providers
        return ActorPlan(sum(int(node["GPU"]) for node in gpu_nodes), cpus, 1, ("cuda",) if wants_cuda else cpu)
    if kind.providers and providers != "auto" and "cpu" not in providers:
        raise ManifestError(f"{where}: runtime.providers: {providers} but the Ray cluster has no GPU; add cpu or "
                            "use auto")
    cpu_nodes = [node for node in nodes if node.get("CPU", 0) >= 1]
    if not cpu_nodes:
        raise EngineError("--ray: the Ray cluster has no node with a CPU or a GPU to run actors on")
    cpus = float(int(min(node["CPU"] for node in cpu_nodes)))
    count = sum(int(node["CPU"] // cpus) for node in cpu_nodes)
    return ActorPlan(count, cpus, 0, cpu)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class InFlightLedger:
    """Per image, how many times a worker started it without finishing: the deaths it was present at."""

    def __init__(self):
        self.unfinished: dict[str, int] = {}

    def deaths(self, keys: list[str]) -> list[int]:
        return [self.unfinished.get(key, 0) for key in keys]

    def start(self, keys: list[str]) -> None:
        for key in keys:
            self.unfinished[key] = self.unfinished.get(key, 0) + 1

    def finish(self, keys: list[str]) -> None:
        for key in keys:
            self.unfinished.pop(key, None)


@dataclass
class _Collected:
    """A sink inside an actor: the rows and costs of one chunk."""

    rows: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    costs: Costs = field(default_factory=Costs)

    def add_rows(self, rows: list[dict[str, object]]) -> None:
        self.rows[str(rows[0]["image"])] = rows

    def add_costs(self, costs: Costs) -> None:
        self.costs.add(costs)


class ExplainWorker:
    """A Ray Data actor: the stages, built once in its own process (on its own GPU), run over chunks of images."""

    def __init__(self, manifest: Manifest, plan: ActorPlan, ledger, max_tries: int, token: str):
        self.ledger, self.max_tries = ledger, max_tries
        gpus = [str(gpu) for gpu in ray.get_gpu_ids()]
        self.identity = {"worker": f"{ray.util.get_node_ip_address()}:{os.getpid()}", "gpus": gpus}
        cv2.setNumThreads(max(1, int(plan.cpus)))
        try:
            if not os.path.exists(token):
                raise EngineError(f"output.dir {manifest.output_dir} is not the driver's on this node; every node must "
                                  "see the images, the model and output.dir at the same paths")
            info = read_graph_info(manifest.model)
            backend = self._backend(manifest, info, plan)
            stages = build_stages(manifest, info, backend)
        except Exception as error:  # noqa: BLE001 - the driver turns any of them into one line naming the actor
            where = f"{self.identity['worker']}{f' (GPU {gpus[0]})' if gpus else ''}"
            raise RuntimeError(f"{SETUP_ERROR}{where}: {' '.join(str(error).split())}") from None
        self.identity["provider"], self.identity["precision"] = backend.provider, backend.precision
        self.write = stages.write
        self.engine = LocalEngine(stages, manifest.batch_size, manifest.workers, manifest.memory_budget)

    @staticmethod
    def _backend(manifest: Manifest, info: GraphInfo, plan: ActorPlan) -> Backend:
        """The actor's model: on a GPU actor CUDA or nothing; ONNX Runtime's threads = the actor's CPUs (OpenVINO's: the
        actor's CPUs less those its read and write threads keep)."""
        if plan.providers == ("cuda",):
            reason = cuda_unavailable()
            if reason:
                raise ModelError(f"CUDA unusable: {reason} (or set runtime.providers: [cpu])")
        backend = open_backend(manifest.model, manifest.backend, providers=list(plan.providers) or "auto",
                               output_sets=output_sets(manifest, info), precision=manifest.precision,
                               cores=max(1, int(plan.cpus)), workers=manifest.workers)
        if plan.providers == ("cuda",) and backend.provider != ORT_NAMES["cuda"]:
            raise ModelError("the CUDA provider failed to initialise, and a GPU actor does not fall back to CPU; "
                             "`onnxcam doctor` on that node says why")
        return backend

    def _explain(self, refs: list[ImageRef], collected: _Collected) -> None:
        keys = [ref.key for ref in refs]
        ray.get(self.ledger.start.remote(keys))
        if self.engine.run(iter(refs), collected):  # stopped inside the actor: fail the chunk, so Ray retries it
            raise RuntimeError("the actor's pipeline was interrupted")
        ray.get(self.ledger.finish.remote(keys))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        refs = [ImageRef(str(key), str(path)) for key, path in zip(batch["key"], batch["path"], strict=True)]
        deaths = ray.get(self.ledger.deaths.remote([ref.key for ref in refs]))
        collected = _Collected()
        if not any(deaths):
            self._explain(refs, collected)
        else:  # a worker died on this chunk before: one image at a time, so only the culprit is counted again
            for ref, died in zip(refs, deaths, strict=True):
                if died >= self.max_tries:  # stays in the ledger: never tried again in this run
                    error = (f"the worker process died {died} times while this image was in flight (a crash in "
                             "decoding or in the model); not tried again")
                    collected.add_rows(self.write(ImageResult(DecodedImage(ref), error=error)))
                else:
                    self._explain([ref], collected)
        done = list(collected.rows)
        retried = any(deaths)
        identity = self.identity | {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
        results = [pickle.dumps((collected.rows[key], collected.costs if i == 0 else None, identity, retried))
                   for i, key in enumerate(done)]
        return {"key": np.array(done, dtype=object), "result": np.array(results, dtype=object)}


def _quiet_ray() -> None:
    """Ray's own progress bars and log lines (its errors too: the run reports them in one line) would garble the
    run's progress and --quiet."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    for name in ("ray", "ray.data"):  # Ray Data's logger has a level and handlers of its own
        logging.getLogger(name).setLevel(logging.CRITICAL)


def ray_printing(on: bool) -> None:
    """Ray prints every retry of a dead worker's task, with its traceback, on the driver's stdout; from the run's
    start to its engine's close the run reports instead (progress, error rows, run.json). The switch is the one
    Ray's debugger uses while it holds the terminal (a private flag of the pinned Ray version)."""
    ray._private.worker._worker_logs_enabled = on


def _one_line(error: Exception) -> str:
    """A Ray error on one line: a worker's set-up reason, else the innermost `SomeError: message` of its text."""
    text = str(error)
    found = re.search(re.escape(SETUP_ERROR) + r"(.*)", text)
    if found:
        return found.group(1).strip()
    causes = re.findall(r"^(\w+(?:Error|Exception|Exit): .+)$", text, flags=re.MULTILINE)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (causes[-1] if causes else lines[0] if lines else type(error).__name__)[:300]


def authenticate(address: str | None) -> None:
    """Ray's token authentication, joining a cluster by address. `ray start --head` turns it on when a token exists
    (~/.ray/auth_token: any local `ray.init()` writes one), but a driver joining by address sends the token only with
    RAY_AUTH_MODE=token in its environment, and one that sends none retries for 10 s and more, then "failed to connect".
    So, unless the user set RAY_AUTH_MODE, a token at hand (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or
    ~/.ray/auth_token) turns token mode on (as Ray does itself for a cluster it finds with `auto`), and one call to
    the cluster's GCS turns a refused or missing token into one line naming what to set."""
    if address in (None, "", "auto", "local") or "://" in address:  # a local Ray, or Ray's own discovery or client
        return
    mode = os.environ.get(AUTH_MODE)
    has_token = AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    fix = "set RAY_AUTH_TOKEN to what `ray get-auth-token` prints on its head node"
    if mode is None and has_token:
        os.environ[AUTH_MODE] = "token"
        Config.initialize("")  # Ray's cached settings, re-read with token mode on
    elif mode is not None and mode.lower() == "token" and not has_token:  # Ray's GCS client would abort the process
        raise EngineError(f"--ray: {AUTH_MODE}=token, but no auth token was found here: {fix}")
    gcs = canonicalize_bootstrap_address(address)
    stderr = os.dup(2)
    try:  # the GCS client logs each refused try on stderr, before ray.init sets Ray's log level
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        InnerGcsClient.standalone(gcs, None, 10_000)
    except ray.exceptions.AuthenticationError:
        if mode is not None and mode.lower() != "token":
            raise EngineError(f"--ray: the Ray cluster at {address} wants its auth token, which {AUTH_MODE}={mode} "
                              f"does not send: unset {AUTH_MODE}") from None
        if not has_token:
            raise EngineError(f"--ray: the Ray cluster at {address} wants its auth token, and none was found here: "
                              f"{fix}") from None
        raise EngineError(f"--ray: the Ray cluster at {address} refused this machine's auth token (RAY_AUTH_TOKEN, "
                          f"RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token): {fix}") from None
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class RayEngine:
    """Connects to (or starts) Ray when built, so the plan and provider are known before the run starts."""

    def __init__(self, manifest: Manifest, settings: RaySettings):
        self.manifest, self.settings = manifest, settings
        start = time.monotonic()
        self.started = not ray.is_initialized()
        if self.started:
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # Ray's C++ warnings, on the run's stderr
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                authenticate(settings.address or os.environ.get("RAY_ADDRESS"))
                ray.init(address=settings.address, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False)
            except EngineError:
                raise
            except Exception as error:  # noqa: BLE001 - ConnectionError, RuntimeError or ValueError by cause
                where = settings.address or os.environ.get("RAY_ADDRESS") or "a local Ray"
                raise EngineError(f"--ray: cannot start or join {where} ({_one_line(error)}); check the address, or "
                                  "start the cluster with `ray start --head`") from None
            if _in_main_thread():  # ray.init exits on SIGTERM; a stopped run must end as the local engine's does
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
        self.connect_s = time.monotonic() - start
        _quiet_ray()
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        self.plan = plan_actors(nodes, manifest.providers, str(manifest.path), manifest.backend)
        kind = BACKENDS[manifest.backend]
        self.provider = ORT_NAMES[self.plan.providers[0]] if self.plan.providers else kind.label  # until they report
        self.precision = kind.planned_precision(manifest.precision)
        self.notes = ["runtime.worker_processes: the Ray actors read and write on threads; the key is the local "
                      "engine's"] if manifest.worker_processes else []
        self.nodes = len(nodes)
        self.actors: dict[str, dict[str, object]] = {}
        self.worker_died = False

    def run(self, todo: Iterator[ImageRef], sink: Sink) -> bool:
        """Runs every image of `todo` on the actors; returns True when interrupted (Ctrl-C)."""
        items = [{"key": ref.key, "path": ref.path} for ref in todo]
        if not items:
            return False
        written: set[str] = set()
        interrupted = False
        here = ray.get_runtime_context().get_node_id()
        ledger = InFlightLedger.options(  # beside the driver: lost only with it
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        token = self.manifest.output_dir / SCRATCH / f"ray-{uuid.uuid4().hex}"
        token.parent.mkdir(exist_ok=True)
        token.touch()
        worker = self.settings.worker or ExplainWorker
        resources = {"num_cpus": self.plan.cpus} | ({"num_gpus": self.plan.gpus} if self.plan.gpus else {})
        results = ray.data.from_items(items).map_batches(
            worker, batch_size=CHUNK_BATCHES * self.manifest.batch_size, batch_format="numpy",
            # Two chunks per actor: one running, the next queued (no idle gap), and at the end no actor holds
            # more than one chunk that another could have taken.
            compute=ray.data.ActorPoolStrategy(size=self.plan.count, max_tasks_in_flight_per_actor=2), **resources,
            fn_constructor_kwargs={"manifest": self.manifest, "plan": self.plan, "ledger": ledger,
                                   "max_tries": self.settings.max_tries, "token": str(token)})
        batches = iter(results.iter_batches(batch_size=None, batch_format="numpy"))
        ray_printing(False)
        try:
            for batch in batches:
                for key, result in zip(batch["key"], batch["result"], strict=True):
                    if key in written:  # a chunk Ray ran twice
                        continue
                    rows, costs, identity, retried = pickle.loads(result)
                    self.worker_died |= retried
                    if costs is not None:
                        sink.add_costs(costs)
                    written.add(key)
                    sink.add_rows(rows)
                    actor = self.actors.setdefault(identity["worker"], {"images": 0})
                    actor.update(identity, images=actor["images"] + 1)
        except KeyboardInterrupt:
            interrupted = True
            if _in_main_thread():
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C stops at once
        except ray.exceptions.RayError as error:
            if SETUP_ERROR in str(error):
                raise EngineError(f"--ray: {_one_line(error)}") from None
            raise EngineError(f"--ray: {_one_line(error)}; the rows received are kept, the same command resumes "
                              "the rest") from None
        finally:
            batches.close()  # stops Ray Data's executor and its actors, also when interrupted
            ray.kill(ledger)
        providers = sorted({str(actor["provider"]) for actor in self.actors.values()})
        self.provider = ", ".join(providers) or self.provider
        precisions = sorted({str(actor["precision"]) for actor in self.actors.values()})
        self.precision = ", ".join(precisions) or self.precision
        if not interrupted and len(written) != len(items):
            raise EngineError(f"--ray: {len(items) - len(written)} images came back without rows; the same command "
                              "redoes them")
        return interrupted

    def describe(self) -> str:
        return f"ray: {self.plan.describe()} on {self.nodes} node{'s' * (self.nodes != 1)}"

    def facts(self) -> dict[str, object]:
        return {"engine": "ray", "worker_processes": False,  # the actors' local engines read and write on threads
                "ray": {"plan": self.plan.describe(), "connect_s": round(self.connect_s, 3),
                        "worker_died": self.worker_died, "actors": list(self.actors.values())}}

    def close(self) -> None:
        """Stops the Ray this run started (the run then clears what killed workers left half-written)."""
        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False
        ray_printing(True)  # after the actors' last words
