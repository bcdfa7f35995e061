"""runtime.worker_processes: the local engine's read and write stages in worker processes give the threads' rows and
files; an image's pixels stay in the worker that read it; a worker that dies fails only the images it held; no
process outlives the run, however it ends."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from numpy_model import NumpyModel, graph_info, metadata_only_graph
from onnxcam.runner.cli import main
from onnxcam.runner.engines.local import LocalEngine
from onnxcam.runner.engines.workers import DIED_HOLDING, DIED_READING, ProcessWorkers
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.manifest import load_manifest
from onnxcam.runner.report.build import STATE_NAME
from onnxcam.runner.run import Run
from onnxcam.runner.size import Size
from onnxcam.runner.stages import Stages, build_stages
from onnxcam.runner.stages.items import ImageResult, TargetResult
from runner_helpers import Gate, read_index, wait_for_rows, write_images, write_manifest

TESTS = Path(__file__).parent


@pytest.fixture
def numpy_onnx(tmp_path) -> Path:
    return metadata_only_graph(tmp_path / "numpy.onnx")


def numpy_manifest(folder: Path, model: Path, images: Path, processes: bool, workers: int = 2) -> Path:
    folder.mkdir(exist_ok=True)
    return write_manifest(folder, model, images, methods=["gradcam", "cam"], targets={"topk": 2},
                          output={"dir": str(folder / "out"), "heatmaps": "png", "thumbnails": 64},
                          runtime={"providers": ["cpu"], "batch_size": 4, "workers": workers,
                                   "worker_processes": processes})


def written_files(out: Path) -> dict[str, bytes]:
    """Every file of the run but its reports (which name the folder and the times)."""
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in out.rglob("*") if path.is_file()
            and path.name not in ("run.json", "report.html", STATE_NAME, "index.csv") and "report" not in path.parts}


def test_processes_write_the_threads_rows_and_files(numpy_onnx, tmp_path):
    write_images(tmp_path / "images", 10, size=(40, 56))
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    results = {}
    for processes in (False, True):
        folder = tmp_path / f"processes-{processes}"
        run = Run(load_manifest(numpy_manifest(folder, numpy_onnx, tmp_path / "images", processes)), quiet=True,
                  backend=NumpyModel())
        assert run.engine.describe() == f"local engine, 2 read/write {'processes' if processes else 'threads'}"
        tally = run.run()
        assert (tally.images, tally.ok, tally.errors) == (11, 10, 1)
        assert json.loads((folder / "out" / "run.json").read_text())["worker_processes"] is processes
        rows = read_index(folder / "out")
        results[processes] = sorted(tuple(row.items()) for row in rows), written_files(folder / "out")
    assert not multiprocessing.active_children(), "the workers end with the run"
    rows, files = results[True]
    assert rows == results[False][0]
    assert files == results[False][1] and any(name.endswith(".jpg") for name in files), "the same overlays"
    errors = [(row["image"], row["error"]) for row in map(dict, rows) if row["status"] == "error"]
    assert len(errors) == 1 and errors[0][0] == "broken.png" and errors[0][1].startswith("not a decodable image")


def test_the_pixels_stay_in_the_worker_that_read_them(numpy_onnx, tmp_path):
    write_images(tmp_path / "images", 1, size=(40, 56))
    manifest = load_manifest(numpy_manifest(tmp_path, numpy_onnx, tmp_path / "images", True, workers=1))
    stages = build_stages(manifest, graph_info(), NumpyModel())
    workers = ProcessWorkers(stages, 1)
    try:
        ref = ImageRef("img00000.png", str(tmp_path / "images" / "img00000.png"))
        decoded = workers.submit_reads([ref])[0].result()
    finally:
        workers.shutdown()
    assert decoded.image is None and decoded.render_size == Size(height=40, width=56)
    assert decoded.tensor.shape == (3, 32, 32)


class CrashOn:
    """A stage that kills its worker process on one image (as a crashing decoder or the out-of-memory killer would),
    and records which process read each image; in the run's own process it only runs `stage`."""

    def __init__(self, stage, key: str, log: Path):
        self.stage, self.key, self.log = stage, key, log

    def __call__(self, item):
        ref = item if isinstance(item, ImageRef) else item.decoded.ref
        if multiprocessing.parent_process() is not None:
            if isinstance(item, ImageRef):
                with open(self.log, "a", encoding="utf-8") as file:
                    file.write(f"{ref.key} {os.getpid()}\n")
            if ref.key == self.key:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.stage(item)

    def memory(self, ref: ImageRef) -> int:
        return self.stage.memory(ref)


@pytest.mark.parametrize("stage", ["read", "write"])
def test_a_dead_worker_fails_only_the_images_it_held(numpy_onnx, tmp_path, stage):
    write_images(tmp_path / "images", 40, size=(40, 56))
    manifest = load_manifest(numpy_manifest(tmp_path, numpy_onnx, tmp_path / "images", True))
    stages = build_stages(manifest, graph_info(), NumpyModel())
    # an early image: the reads still to submit when its worker dies (the look-ahead bounds those before) go on
    log, culprit = tmp_path / "readers.log", "img00001.png"
    crashing = CrashOn(getattr(stages, stage), culprit, log)
    stages = Stages(read=crashing, explain=stages.explain, write=stages.write) if stage == "read" else Stages(
        read=CrashOn(stages.read, "", log), explain=stages.explain, write=crashing)
    rows = {}

    class Sink:
        def add_rows(self, found):
            assert found[0]["image"] not in rows
            rows[found[0]["image"]] = found

        def add_costs(self, costs):
            pass

    refs = iter(ImageRef(path.name, str(path)) for path in sorted((tmp_path / "images").iterdir()))
    assert LocalEngine(stages, batch_size=4, workers=2, memory_budget=2**30, processes=True).run(refs, Sink()) is False
    assert not multiprocessing.active_children(), "the workers end with the run"
    assert len(rows) == 40
    errors = {key: found[0]["error"] for key, found in rows.items() if found[0]["status"] == "error"}
    assert errors[culprit] == (DIED_READING if stage == "read" else DIED_HOLDING)
    assert set(errors.values()) <= {DIED_READING, DIED_HOLDING} and all(len(found) == 1 for found in
                                                                        (rows[key] for key in errors))
    readers = dict(line.split() for line in log.read_text().splitlines())
    dead = readers[culprit]
    assert len(set(readers.values())) == 3, "a fresh worker took the dead one's place"
    assert all(readers.get(key, dead) == dead for key in errors), "only images the dead worker held fail"
    assert all(found[0]["status"] == "ok" for key, found in rows.items() if readers.get(key, dead) != dead)


def image_refs(folder: Path) -> list[ImageRef]:
    return [ImageRef(path.name, str(path)) for path in sorted(folder.iterdir())]


def shut_down(workers: ProcessWorkers, seconds: float = 30) -> bool:
    """Shuts `workers` down; False when that did not return within `seconds` (the workers are killed then)."""
    stopping = threading.Thread(target=workers.shutdown, daemon=True)
    stopping.start()
    stopping.join(seconds)
    if stopping.is_alive():
        for worker in workers.workers:
            worker.process.kill()
        stopping.join(10)
        return False
    return True


class GatedWrite:
    """A write stage that writes nothing until `gate` (a spawn context's Event) is set; its one row names the image."""

    def __init__(self, gate):
        self.gate = gate

    def __call__(self, result):
        self.gate.wait()
        return [{"image": result.decoded.ref.key}]


def ctrl_c_once_sending(thread: threading.Thread) -> None:
    """Sends Ctrl-C to `thread` once it is inside a pipe's send (waiting for the other end to read, here)."""
    def sending() -> bool:
        frame = sys._current_frames().get(thread.ident)
        while frame is not None:
            if frame.f_code.co_name == "_send" and frame.f_code.co_filename.endswith("connection.py"):
                return True
            frame = frame.f_back
        return False

    while not sending():
        time.sleep(0.001)  # polls an order of events: how soon does not matter
    signal.pthread_kill(thread.ident, signal.SIGINT)


def test_ctrl_c_in_the_middle_of_a_message_does_not_hang_the_shutdown(numpy_onnx, tmp_path):
    write_images(tmp_path / "images", 2, size=(40, 56))
    manifest = load_manifest(numpy_manifest(tmp_path, numpy_onnx, tmp_path / "images", True, workers=1))
    stages = build_stages(manifest, graph_info(), NumpyModel())
    gate = multiprocessing.get_context("spawn").Event()
    workers = ProcessWorkers(Stages(read=stages.read, explain=stages.explain, write=GatedWrite(gate)), 1)
    decoded = [future.result(timeout=60) for future in workers.submit_reads(image_refs(tmp_path / "images"))]
    under_way = workers.submit_writes([ImageResult(decoded[0])])  # the worker is busy with it until the gate opens
    # a write of 4 MB: the task pipe takes 64 KB of it, the rest waits for the worker; Ctrl-C comes meanwhile
    big = ImageResult(decoded[1], targets=[TargetResult(0, 1.0, {"gradcam": np.zeros((1024, 1024), np.float32)})])
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ctrl_c = threading.Thread(target=ctrl_c_once_sending, args=(threading.main_thread(),), daemon=True)
    try:
        ctrl_c.start()
        with pytest.raises(KeyboardInterrupt):
            workers.submit_writes([big])
    finally:
        ctrl_c.join()
        signal.signal(signal.SIGINT, previous)
    assert not under_way[0].done(), "Ctrl-C came while the worker was still busy"
    gate.set()
    assert under_way[0].result(timeout=30) == [{"image": "img00000.png"}], "the write under way finishes"
    assert shut_down(workers), "the shutdown returns"
    assert not multiprocessing.active_children()


class Unrebuildable(Exception):
    """An exception that pickles but cannot be unpickled (its __init__ wants other arguments than its args)."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")


class RaiseOn:
    """A read stage that raises Unrebuildable on one image in a worker process (a bug in a stage)."""

    def __init__(self, stage, key: str):
        self.stage, self.key = stage, key

    def __call__(self, ref):
        if ref.key == self.key and multiprocessing.parent_process() is not None:
            raise Unrebuildable(ref.key, "a bug")
        return self.stage(ref)

    def memory(self, ref: ImageRef) -> int:
        return self.stage.memory(ref)


def test_an_exception_the_run_cannot_unpickle_reaches_its_future(numpy_onnx, tmp_path):
    write_images(tmp_path / "images", 2, size=(40, 56))
    manifest = load_manifest(numpy_manifest(tmp_path, numpy_onnx, tmp_path / "images", True, workers=1))
    stages = build_stages(manifest, graph_info(), NumpyModel())
    workers = ProcessWorkers(Stages(read=RaiseOn(stages.read, "img00000.png"), explain=stages.explain,
                                    write=stages.write), 1)
    try:
        futures = workers.submit_reads(image_refs(tmp_path / "images"))
        with pytest.raises(RuntimeError, match="Unrebuildable: img00000.png: a bug"):
            futures[0].result(timeout=20)
        assert futures[1].result(timeout=20).error == ""
    finally:
        assert shut_down(workers)
    assert not multiprocessing.active_children()


class ForkFailsAfter:
    """A spawn context that starts `count` processes, and no more (fork fails: memory, a process limit)."""

    def __init__(self, count: int):
        self.spawn, self.left = multiprocessing.get_context("spawn"), count

    def Pipe(self, duplex: bool = True):  # noqa: N802 (multiprocessing's name)
        return self.spawn.Pipe(duplex)

    def Process(self, **kwargs):  # noqa: N802
        if not self.left:
            raise OSError(errno.EAGAIN, "no process to spare")
        self.left -= 1
        return self.spawn.Process(**kwargs)


def test_no_fresh_worker_fails_the_tasks_instead_of_hanging(numpy_onnx, tmp_path):
    write_images(tmp_path / "images", 3, size=(40, 56))
    manifest = load_manifest(numpy_manifest(tmp_path, numpy_onnx, tmp_path / "images", True, workers=1))
    stages = build_stages(manifest, graph_info(), NumpyModel())
    read = CrashOn(stages.read, "img00000.png", tmp_path / "readers.log")
    # the worker that dies cannot be replaced
    workers = ProcessWorkers(Stages(read=read, explain=stages.explain, write=stages.write), 1, ForkFailsAfter(1))
    refs = image_refs(tmp_path / "images")
    try:
        for future in workers.submit_reads(refs):
            with pytest.raises(OSError, match="no process to spare"):
                future.result(timeout=20)
        with pytest.raises(OSError, match="no process to spare"):
            workers.submit_reads(refs[1:2])[0].result(timeout=5)
    finally:
        assert shut_down(workers)
    assert not multiprocessing.active_children()


def test_worker_processes_is_true_or_false(numpy_onnx, tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    manifest = numpy_manifest(tmp_path, numpy_onnx, tmp_path / "images", processes="yes please")
    assert main(["run", str(manifest)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "manifest.yaml: runtime.worker_processes: expected true or false, got a string 'yes please'"), lines


# A run of the NumPy model in its own process and session (as a terminal starts one).
NUMPY_RUN = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "sys.path.insert(0, sys.argv[2]); from numpy_model import NumpyModel; "
             "from onnxcam.runner.manifest import load_manifest; from onnxcam.runner.run import Run; "
             "Run(load_manifest(sys.argv[1]), quiet=True, backend=NumpyModel()).run()")


def session_processes(session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getsid(int(entry.name)) == session:
                found.append(int(entry.name))
        except ProcessLookupError:
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="lists processes through /proc")
@pytest.mark.parametrize("stop", ["ctrl-c", "kill -9"])
def test_a_stopped_run_leaves_no_worker(numpy_onnx, tmp_path, stop):
    write_images(tmp_path / "images", 200, size=(40, 56))
    manifest = numpy_manifest(tmp_path, numpy_onnx, tmp_path / "images", True)
    gate = Gate(tmp_path / "images" / "img00060.png")  # a FIFO in its place holds the run while it is stopped
    process = subprocess.Popen([sys.executable, "-c", NUMPY_RUN, str(manifest), str(TESTS)], start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with gate:
            gate.wait_until_read(process)
            wait_for_rows(tmp_path / "out" / "index.csv", 20, process)
            assert len(session_processes(process.pid)) >= 3, "the run and its two workers"
            if stop == "ctrl-c":  # a terminal sends it to every process of the foreground group
                os.killpg(process.pid, signal.SIGINT)
            else:
                process.kill()
        assert process.wait(timeout=60) == (0 if stop == "ctrl-c" else -signal.SIGKILL), process.stdout.read()
        if stop == "ctrl-c":
            assert json.loads((tmp_path / "out" / "run.json").read_text())["interrupted"] is True
            rows = read_index(tmp_path / "out")
            assert 0 < len(rows) < 200 * 4 and {row["status"] for row in rows} == {"ok"}, "writes under way finish"
            assert gate.path.name not in {row["image"] for row in rows}, "the image being read when stopped is dropped"
        deadline = time.monotonic() + 30
        while session_processes(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not session_processes(process.pid), "no worker outlives the run"
    finally:
        if session_processes(process.pid):
            os.killpg(process.pid, signal.SIGKILL)


class WaitingModel(NumpyModel):
    """NumpyModel that runs each batch after the first only once the sink has the rows of the batch before (two
    passes a batch: topk 2). Would the driver wait for the model before handing rows over, it would wait forever:
    it gives up after a minute, and says so."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size, self.rows, self.threads, self.gave_up = batch_size, 0, set(), False
        self.changed = threading.Condition()

    def add_rows(self, found):
        with self.changed:
            self.rows += 1
            self.changed.notify_all()

    def run(self, outputs, inputs, targets):
        batch = len(self.batches) // 2
        with self.changed:
            self.threads.add(threading.get_ident())
            if not self.gave_up:
                self.gave_up = not self.changed.wait_for(lambda: self.rows >= batch * self.batch_size, 60)
        return super().run(outputs, inputs, targets)


@pytest.mark.parametrize("processes", [False, True])
def test_the_model_runs_beside_the_driver(numpy_onnx, tmp_path, processes):
    """The batch stage has a thread of its own: while the model runs a batch, the driver hands the rows of the
    batch before to the sink (the model does not wait for the host between batches, nor the host for the model)."""
    write_images(tmp_path / "images", 24, size=(40, 56))
    manifest = load_manifest(numpy_manifest(tmp_path, numpy_onnx, tmp_path / "images", processes))
    model = WaitingModel(batch_size=4)
    stages = build_stages(manifest, graph_info(), model)

    class Sink:
        def add_rows(self, found):
            model.add_rows(found)

        def add_costs(self, costs):
            pass

    refs = iter(ImageRef(path.name, str(path)) for path in sorted((tmp_path / "images").iterdir()))
    assert LocalEngine(stages, batch_size=4, workers=2, memory_budget=2**30, processes=processes).run(
        refs, Sink()) is False
    assert model.rows == 24 and model.batches == [4] * 12  # topk 2: two passes per batch
    assert not model.gave_up, "the rows of each batch reach the sink while the model runs the next"
    assert threading.get_ident() not in model.threads, "the model runs in a thread of its own"
