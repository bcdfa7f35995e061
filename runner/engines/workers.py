"""Where the local engine's read and write tasks run: `ThreadWorkers` (two thread pools sharing the stages) or
`ProcessWorkers` (`runtime.worker_processes: true`: worker processes, for the cores the GIL leaves idle).

Worker processes are spawned, never forked (the run's process holds ONNX Runtime's or CUDA's state and threads),
and each builds its read and write stages once. An image stays with the worker that read it: the worker keeps
the photograph's pixels (`DecodedImage.image`, drawn on by the write stage) and returns the model input without
them, and that image's write goes back to the same worker, which puts them back. Each worker is a pool of one
process, so its tasks run in the order given; a read goes to the worker with the fewest tasks pending.

A worker that dies (a crash in a decoder or an encoder, the out-of-memory killer) fails only the images it held:
each becomes an error row saying so, a fresh worker takes its place at its next task, and the run goes on.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Protocol, TypeVar

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
T = TypeVar("T")


class Workers(Protocol):
    def submit_read(self, ref: ImageRef) -> Future[DecodedImage]: ...

    def submit_write(self, result: ImageResult) -> Future[list[IndexRow]]: ...

    def shutdown(self) -> None:
        """Ends the workers: reads not started are dropped; returns once no write runs any more."""
        ...


class ThreadWorkers:
    """A pool of `count` threads that read and one of `count` threads that write, sharing the stages."""

    def __init__(self, stages: Stages, count: int):
        self.read, self.write = stages.read, stages.write
        self.readers = ThreadPoolExecutor(count, thread_name_prefix="read")
        self.writers = ThreadPoolExecutor(count, thread_name_prefix="write")

    def submit_read(self, ref: ImageRef) -> Future[DecodedImage]:
        return self.readers.submit(self.read, ref)

    def submit_write(self, result: ImageResult) -> Future[list[IndexRow]]:
        return self.writers.submit(self.write, result)

    def shutdown(self) -> None:
        self.readers.shutdown(wait=False, cancel_futures=True)
        self.writers.shutdown(wait=True)


class _Worker:
    """One worker process: a pool of one, so its tasks run in the order they were submitted."""

    def __init__(self, stages: Stages, count: int):
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                                        initargs=(stages.read, stages.write, count))
        self.pending: set[Future] = set()

    def submit(self, task: Callable, argument: object) -> Future:
        """Raises BrokenProcessPool once the process is known to have died."""
        future = self.pool.submit(task, argument)
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)
        return future


class ProcessWorkers:
    """`count` worker processes that read and write, each image's read and write in the same one."""

    def __init__(self, stages: Stages, count: int):
        self.stages, self.count = stages, count
        self.workers = [_Worker(stages, count) for _ in range(count)]
        self.holders: dict[str, _Worker] = {}  # image key -> the worker that read it, until its write is submitted

    def submit_read(self, ref: ImageRef) -> Future[DecodedImage]:
        worker = min(self.workers, key=lambda w: len(w.pending))
        try:
            future = worker.submit(_read, ref)
        except BrokenProcessPool:
            worker = self._replace(worker)
            future = worker.submit(_read, ref)
        self.holders[ref.key] = worker
        return _surviving(future, lambda: DecodedImage(ref, error=DIED_READING))

    def submit_write(self, result: ImageResult) -> Future[list[IndexRow]]:
        worker = self.holders.pop(result.decoded.ref.key)
        sent = replace(result, decoded=replace(result.decoded, tensor=None if result.decoded.tensor is None
                                               else NO_TENSOR))
        if worker in self.workers:
            try:
                return _surviving(worker.submit(_write, sent), lambda: self._error_rows(result))
            except BrokenProcessPool:
                self._replace(worker)
        done: Future[list[IndexRow]] = Future()
        done.set_result(self._error_rows(result))
        return done

    def shutdown(self) -> None:
        for worker in self.workers:
            worker.pool.shutdown(wait=True, cancel_futures=True)

    def _replace(self, worker: _Worker) -> _Worker:
        """A fresh worker in the place of one whose process died."""
        worker.pool.shutdown(wait=True)
        fresh = _Worker(self.stages, self.count)
        self.workers[self.workers.index(worker)] = fresh
        return fresh

    def _error_rows(self, result: ImageResult) -> list[IndexRow]:
        """The rows of an image whose worker died: its own error if it had one, else the death (no pixels needed)."""
        return self.stages.write(result if result.error else replace(result, error=DIED_HOLDING, targets=[]))


def _surviving(future: Future[T], instead: Callable[[], T]) -> Future[T]:
    """`future`'s outcome, or `instead()` when its worker process died; cancelling it drops the outcome."""
    outcome: Future[T] = Future()

    def settle(done: Future[T]) -> None:
        if not outcome.set_running_or_notify_cancel():
            return
        try:
            outcome.set_result(done.result())
        except BrokenProcessPool:
            outcome.set_result(instead())
        except BaseException as error:  # noqa: BLE001 - handed on to whoever waits on the outcome
            outcome.set_exception(error)

    future.add_done_callback(settle)
    return outcome


# -- inside a worker process -----------------------------------------------------------------------------------

_stages: tuple[ReadStage, WriteStage] | None = None
_pixels: dict[str, np.ndarray] = {}  # image key -> its pixels, from its read to its write


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
    """Ends this worker when the run's process ends, however it ends (its pool's queues would keep it waiting
    after a kill -9)."""
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
