"""Where the local engine's read and write tasks run: `ThreadWorkers` (two thread pools sharing the stages) or
`ProcessWorkers` (`runtime.worker_processes: true`: worker processes, for the cores the GIL leaves idle).

Worker processes are spawned, never forked (the run's process holds ONNX Runtime's or CUDA's state and threads),
and each builds its read and write stages once. An image stays with the worker that read it: the worker keeps
the photograph's pixels (`DecodedImage.image`, drawn on by the write stage) and returns the model input without
them, and that image's write goes back to the same worker, which puts them back.

The run's process must hand out thousands of images a second, so the workers are plain processes on pipes, not
concurrent.futures pools (whose two threads and several wake-ups per task cost about a millisecond of the run's
process per image): the engine submits reads and writes in groups, each worker gets its share of a group as one
message and answers with one, and a single thread receives every answer and settles the images' futures.

A worker that dies (a crash in a decoder or an encoder, the out-of-memory killer) fails only the images it held:
each becomes an error row saying so, a fresh worker takes its place, and the run goes on.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing.reduction import ForkingPickler
from typing import Protocol

import cv2
import numpy as np
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.stages import Stages
from onnxcam.runner.stages.items import DecodedImage, ImageResult
from onnxcam.runner.stages.read import ReadStage
from onnxcam.runner.stages.write import IndexRow, WriteStage

DIED_READING = "the worker process reading this image died"
DIED_HOLDING = "the worker process holding this image died before writing its files"
# What a write task carries instead of the model input: the write stage only asks whether there was one (for the
# rows' region columns), and the input would cross back to the worker for nothing.
NO_TENSOR = np.empty(0, np.float32)


class Workers(Protocol):
    def submit_reads(self, refs: Sequence[ImageRef]) -> list[Future[DecodedImage]]: ...

    def submit_writes(self, results: Sequence[ImageResult]) -> list[Future[list[IndexRow]]]: ...

    def shutdown(self) -> None:
        """Ends the workers once the writes submitted are done (reads the engine cancelled: threads drop those not
        started, worker processes may still decode those they were sent); returns once no write runs any more."""
        ...


class ThreadWorkers:
    """A pool of `count` threads that read and one of `count` threads that write, sharing the stages."""

    def __init__(self, stages: Stages, count: int):
        self.read, self.write = stages.read, stages.write
        self.readers = ThreadPoolExecutor(count, thread_name_prefix="read")
        self.writers = ThreadPoolExecutor(count, thread_name_prefix="write")

    def submit_reads(self, refs: Sequence[ImageRef]) -> list[Future[DecodedImage]]:
        return [self.readers.submit(self.read, ref) for ref in refs]

    def submit_writes(self, results: Sequence[ImageResult]) -> list[Future[list[IndexRow]]]:
        return [self.writers.submit(self.write, result) for result in results]

    def shutdown(self) -> None:
        self.readers.shutdown(wait=False, cancel_futures=True)
        self.writers.shutdown(wait=True)


@dataclass
class _Task:
    futures: list[Future]
    instead: Callable[[int], object]  # the outcome of item i when the worker died before answering


@dataclass(eq=False)
class _Worker:
    """One worker process, its task pipe (the run's process writes) and answer pipe (the collector reads)."""

    process: multiprocessing.process.BaseProcess
    tasks: multiprocessing.connection.Connection
    answers: multiprocessing.connection.Connection
    pending: dict[int, _Task] = field(default_factory=dict)  # task id -> what waits on its answer
    items: int = 0  # images in its pending tasks


class ProcessWorkers:
    """`count` worker processes that read and write, each image's read and write in the same one. `context` makes
    the processes and pipes (multiprocessing's spawn context unless given)."""

    def __init__(self, stages: Stages, count: int, context: multiprocessing.context.BaseContext | None = None):
        self.stages, self.count = stages, count
        self.context = context or multiprocessing.get_context("spawn")
        self.ids = itertools.count()
        self.lock = threading.Lock()  # the workers and their pending tasks, shared with the collector
        self.workers = [self._start() for _ in range(count)]
        self.holders: dict[str, _Worker] = {}  # image key -> the worker that read it, until its write is submitted
        self.wake_reader, self.wake_writer = self.context.Pipe(duplex=False)  # tells the collector to look again
        self.stopping = False
        self.broken: BaseException | None = None  # what stopped the collector, if anything did
        self.collector = threading.Thread(target=self._collect, name="collect", daemon=True)
        self.collector.start()

    def submit_reads(self, refs: Sequence[ImageRef]) -> list[Future[DecodedImage]]:
        """Shares `refs` among the workers, the least busy first, one message each."""
        futures = [Future() for _ in refs]
        shares: dict[int, list[int]] = {}
        with self.lock:
            load = {index: worker.items for index, worker in enumerate(self.workers)}
            for i in range(len(refs)):
                index = min(load, key=load.get)
                load[index] += 1
                shares.setdefault(index, []).append(i)
        for index, positions in shares.items():
            worker = self.workers[index]
            for i in positions:
                self.holders[refs[i].key] = worker
            chunk = [refs[i] for i in positions]
            self._send(worker, "read", chunk, [futures[i] for i in positions],
                       lambda i, chunk=chunk: DecodedImage(chunk[i], error=DIED_READING))
        return futures

    def submit_writes(self, results: Sequence[ImageResult]) -> list[Future[list[IndexRow]]]:
        """Sends each image's write to the worker holding its pixels, one message per worker."""
        futures = [Future() for _ in results]
        shares: dict[int, tuple[_Worker, list[int]]] = {}
        for i, result in enumerate(results):
            worker = self.holders.pop(result.decoded.ref.key)
            shares.setdefault(id(worker), (worker, []))[1].append(i)
            if result.decoded.tensor is not None:  # the batch stage is done with it
                result.decoded.tensor = NO_TENSOR
        for worker, positions in shares.values():
            chunk = [results[i] for i in positions]
            self._send(worker, "write", chunk, [futures[i] for i in positions],
                       lambda i, chunk=chunk: self._error_rows(chunk[i]))
        return futures

    def shutdown(self) -> None:
        """Lets the tasks under way finish (the engine has cancelled the reads it gave up), then ends the workers:
        each stops at the end of its task pipe, once it has answered every task it got whole (a message that Ctrl-C
        cut short ends there too; a None sent after it would only be read as the rest of it)."""
        with self.lock:
            self.stopping = True
            workers = list(self.workers)
        for worker in workers:
            worker.tasks.close()  # a dead one's too: the collector settles its tasks
        self.wake_writer.send(None)
        self.collector.join()

    def _start(self) -> _Worker:
        tasks_in, tasks_out = self.context.Pipe(duplex=False)
        answers_in, answers_out = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_serve, args=(tasks_in, answers_out, self.stages.read,
                                                            self.stages.write, self.count), daemon=True)
        process.start()
        tasks_in.close()
        answers_out.close()
        return _Worker(process, tasks_out, answers_in)

    def _send(self, worker: _Worker, kind: str, items: list, futures: list[Future], instead: Callable) -> None:
        task = next(self.ids)
        with self.lock:
            broken = self.broken
            alive = broken is None and worker in self.workers
            if alive:
                worker.pending[task] = _Task(futures, instead)
                worker.items += len(items)
        if alive:
            try:
                worker.tasks.send((task, kind, items))
            except OSError:
                pass  # it died while we sent (or its pipe is closed); the collector settles the task
            except BaseException:
                # Ctrl-C while the message waited for room in the pipe: the rest of it never comes, so the worker
                # ends after the tasks before it, and the collector settles this one with its substitutes
                worker.tasks.close()
                raise
            return
        for i, future in enumerate(futures):
            _settle(future, broken if broken is not None else instead(i))

    def _collect(self) -> None:
        """The collector thread: each answer settles its task's futures; a worker's death settles all its tasks
        with their substitutes and starts a fresh worker (once the run is ending, none). Should it fail (no fresh
        worker can start, an answer that does not unpickle), every task gets its error instead of a wait forever."""
        try:
            while True:
                with self.lock:
                    if self.stopping and not self.workers:
                        return
                    watched = {worker.answers: worker for worker in self.workers}
                    watched |= {worker.process.sentinel: worker for worker in self.workers}
                for ready in multiprocessing.connection.wait([*watched, self.wake_reader]):
                    if ready is self.wake_reader:
                        self.wake_reader.recv()
                    elif ready is watched[ready].answers:
                        self._receive(watched[ready])
                    else:
                        self._bury(watched[ready])
        except BaseException as error:  # noqa: BLE001 - handed to every future, which the engine waits on
            self._break(error)

    def _break(self, error: BaseException) -> None:
        """The collector cannot go on: the workers end, and their tasks and every later one get `error`."""
        with self.lock:
            self.broken = error
            tasks = [task for worker in self.workers for task in worker.pending.values()]
            for worker in self.workers:
                worker.pending = {}
            workers = list(self.workers)
        for worker in workers:
            worker.process.kill()
            worker.process.join()
        for task in tasks:
            for future in task.futures:
                _settle(future, error)

    def _receive(self, worker: _Worker) -> bool:
        """Settles the task of the worker's next answer; False when there is none (it died mid-answer)."""
        try:
            task, outcomes = worker.answers.recv()
        except (EOFError, OSError):
            return False  # its sentinel says the rest
        with self.lock:
            done = worker.pending.pop(task)
            worker.items -= len(done.futures)
        for future, outcome in zip(done.futures, outcomes, strict=True):
            _settle(future, outcome)
        return True

    def _bury(self, worker: _Worker) -> None:
        """A worker process ended: what it answered counts, the rest of its tasks get their substitutes."""
        while worker.answers.poll() and self._receive(worker):
            pass
        with self.lock:
            if worker not in self.workers:
                return
            index = self.workers.index(worker)
            if self.stopping:
                del self.workers[index]
            else:
                self.workers[index] = self._start()
            tasks, worker.pending = list(worker.pending.values()), {}
        for task in tasks:
            for i, future in enumerate(task.futures):
                _settle(future, task.instead(i))
        worker.process.join()
        worker.answers.close()  # not its task pipe: the run's thread may be sending on it (it closes with the worker)

    def _error_rows(self, result: ImageResult) -> list[IndexRow]:
        """The rows of an image whose worker died: its own error if it had one, else the death (no pixels needed)."""
        return self.stages.write(result if result.error else replace(result, error=DIED_HOLDING, targets=[]))


def _settle(future: Future, outcome: object) -> None:
    """Hands `outcome` (a result, or an exception raised in the worker) to `future` unless it was cancelled."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass  # cancelled: the engine gave up on this read


# -- inside a worker process -----------------------------------------------------------------------------------

_stages: tuple[ReadStage, WriteStage] | None = None
_pixels: dict[str, np.ndarray] = {}  # image key -> its pixels, from its read to its write


def _serve(tasks, answers, read: ReadStage, write: WriteStage, count: int) -> None:
    """A worker's life: (task id, "read" | "write", items) in, (task id, one outcome per item) out, until the run
    closes its end of the task pipe."""
    _start(read, write, count)
    run = {"read": _read, "write": _write}
    while True:
        try:
            task, kind, items = tasks.recv()
        except (EOFError, OSError):  # OSError: the end came inside a message the run cut short
            return
        outcomes = []
        for item in items:
            try:
                outcomes.append(run[kind](item))
            except Exception as error:  # noqa: BLE001 - the stages catch what a file can do; this is a bug: hand it on
                outcomes.append(_portable(error))
        answers.send((task, outcomes))


def _portable(error: Exception) -> Exception:
    """`error`, or when the run's process could not unpickle it (an __init__ that wants other arguments than its
    args, an attribute that does not pickle), a RuntimeError that says what it was."""
    try:
        ForkingPickler.loads(ForkingPickler.dumps(error))
    except Exception:  # noqa: BLE001 - whatever pickling raises
        return RuntimeError(f"{type(error).__module__}.{type(error).__qualname__}: {error}")
    return error


def _start(read: ReadStage, write: WriteStage, count: int) -> None:
    """Ctrl-C and SIGTERM reach the whole process group; the run, not they, stops its workers (after the writes
    under way). OpenCV's threads: this process's share of the cores."""
    global _stages
    _stages = read, write
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cv2.setNumThreads(max(1, cores // count))
    threading.Thread(target=_end_with_parent, daemon=True).start()


def _end_with_parent() -> None:
    """Ends this worker when the run's process ends, however it ends (a kill -9 closes no pipe of ours in time)."""
    multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
    os._exit(1)


def _read(ref: ImageRef) -> DecodedImage:
    decoded = _stages[0](ref)
    if decoded.image is not None:
        _pixels[ref.key], decoded.image = decoded.image, None
    return decoded


def _write(result: ImageResult) -> list[IndexRow]:
    result.decoded.image = _pixels.pop(result.decoded.ref.key, None)
    return _stages[1](result)
