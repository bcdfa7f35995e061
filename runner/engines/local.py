"""The local engine: one machine, `workers` that read (decode and preprocess), the batch stage in a thread of its
own, and `workers` that write: threads, or with `runtime.worker_processes` processes (engines/workers.py); the
scheduling here is the same for both.

The batch stage runs beside the calling thread, which meanwhile gathers the next batch and hands out reads and
writes: the model gets its next batch as soon as it finishes one (a GPU would otherwise wait for the host's part of
every batch, and the host for the GPU). At most two batches are with it, the one it runs and the next.

What is in flight is bounded twice: by counts (images read ahead, writes pending) and by bytes. Before an image
is read, the read stage estimates what it will hold until its rows are back (`memory`); an image is only read
while the images in flight and it fit `memory_budget`, except when nothing else is in flight, so an image too
big for the budget on its own runs alone. A batch closes early when the budget lets no more images in.
Ctrl-C (or SIGTERM, turned into KeyboardInterrupt by the CLI) stops reading, lets the batch the model runs and the
writes that are under way finish and hands the writes' rows to the sink; the rest is redone by the next run.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from onnxcam.runner.engines import Sink
from onnxcam.runner.engines.workers import ProcessWorkers, ThreadWorkers, Workers
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.stages import Stages
from onnxcam.runner.stages.items import BatchResult, DecodedImage
from onnxcam.runner.stages.write import IndexRow

BATCHES_WITH_THE_MODEL = 2  # the one it runs and the next, ready when it finishes


class LocalEngine:
    def __init__(self, stages: Stages, batch_size: int, workers: int, memory_budget: int, processes: bool = False):
        self.stages, self.batch_size, self.workers, self.memory_budget = stages, batch_size, workers, memory_budget
        self.processes = processes

    @property
    def provider(self) -> str:
        return self.stages.explain.backend.provider

    @property
    def precision(self) -> str:
        return self.stages.explain.backend.precision

    @property
    def notes(self) -> list[str]:
        return self.stages.explain.backend.notes

    def describe(self) -> str:
        return f"local engine, {self.workers} read/write {'processes' if self.processes else 'threads'}"

    def facts(self) -> dict[str, object]:
        return {"engine": "local", "worker_processes": self.processes}

    def close(self) -> None:
        """Nothing to release: the workers end with each run."""

    def run(self, todo: Iterator[ImageRef], sink: Sink) -> bool:
        """Runs every image of `todo`; returns True when interrupted."""
        flight = _InFlight(self, todo, sink)
        try:
            while True:
                flight.read_ahead()
                batch, held = flight.next_batch()
                if batch:
                    flight.hand_to_model(batch, held)
                elif flight.with_model:
                    flight.hand_to_writers()  # nothing more to read for now: the budget waits for these images' writes
                elif flight.waiting:
                    flight.collect_writes(block_above=len(flight.writing) - 1)  # budget full: wait for the oldest
                else:
                    break
            flight.collect_writes(block_above=0)
        except KeyboardInterrupt:
            flight.cancel()
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C stops at once
            flight.collect_writes(block_above=0)  # keep what is finished; the rest is redone by the next run
            return True
        finally:
            flight.close()
        return False


class _InFlight:
    """One run's work in flight: reads, the batches with the model and writes, each with the bytes its images hold
    (from their reads to their rows), and the next image when it does not fit the memory budget yet."""

    def __init__(self, engine: LocalEngine, todo: Iterator[ImageRef], sink: Sink):
        self.stages, self.todo, self.sink = engine.stages, todo, sink
        self.batch_size, self.memory_budget = engine.batch_size, engine.memory_budget
        # Worker processes get reads in groups (a message per worker, not per image), so the look-ahead keeps a
        # second batch in flight and reads are handed out once a group's worth of room is free.
        self.look_ahead = (2 if engine.processes else 1) * engine.batch_size + 2 * engine.workers
        self.group = max(1, engine.batch_size // 4) if engine.processes else 1
        self.reading: deque[tuple[Future[DecodedImage], int]] = deque()  # (read, the bytes its image holds)
        self.with_model: deque[tuple[Future[BatchResult], dict[int, int]]] = deque()  # (batch, id(image) -> bytes)
        self.writing: deque[tuple[Future[list[IndexRow]], int]] = deque()
        self.held = 0  # bytes of the images in flight
        self.waiting: tuple[ImageRef, int] | None = None  # the next image and its bytes, when it does not fit yet
        self.pool: Workers = (ProcessWorkers if engine.processes else ThreadWorkers)(engine.stages, engine.workers)
        self.model = ThreadPoolExecutor(1, thread_name_prefix="model")

    def read_ahead(self) -> None:
        """Hands out reads while the look-ahead and the budget let images in (for worker processes, once a group's
        worth of room is free), once the writes that are done have given their bytes back."""
        self.collect_writes(block_above=len(self.writing))
        if self.reading and self.look_ahead - len(self.reading) < self.group:
            return
        refs, nbytes = [], []
        while len(self.reading) + len(refs) < self.look_ahead:
            if self.waiting is None:
                ref = next(self.todo, None)
                if ref is None:
                    break
                self.waiting = (ref, self.stages.read.memory(ref))
            ref, image_bytes = self.waiting
            if self.held and self.held + image_bytes > self.memory_budget:
                break
            self.waiting = None
            self.held += image_bytes
            refs.append(ref)
            nbytes.append(image_bytes)
        self.reading.extend(zip(self.pool.submit_reads(refs), nbytes, strict=True))

    def next_batch(self) -> tuple[list[DecodedImage], dict[int, int]]:
        """The oldest reads, up to batch_size decoded images (those that failed to decode pass through without a
        model slot), and the bytes each holds by id; reads ahead as each is taken. Empty when none is in flight."""
        batch, held, decoded = [], {}, 0
        while decoded < self.batch_size and self.reading:
            future, image_bytes = self.reading.popleft()
            image = future.result()
            batch.append(image)
            held[id(image)] = image_bytes
            decoded += not image.error
            self.read_ahead()
        return batch, held

    def hand_to_model(self, batch: list[DecodedImage], held: dict[int, int]) -> None:
        """A batch to the model; once it has BATCHES_WITH_THE_MODEL, its oldest goes on to the writers."""
        self.with_model.append((self.model.submit(self.stages.explain, batch), held))
        if len(self.with_model) == BATCHES_WITH_THE_MODEL:
            self.hand_to_writers()

    def hand_to_writers(self) -> None:
        """The model's oldest batch to the writers; while the model runs it, the writes that finish hand their rows
        to the sink and give their bytes back (more reads where the budget now lets them in)."""
        future, held = self.with_model.popleft()
        while self.writing and not future.done():
            wait([future, self.writing[0][0]], return_when=FIRST_COMPLETED)
            self.read_ahead()
        result = future.result()
        self.sink.add_costs(result.costs)
        self.writing.extend(zip(self.pool.submit_writes(result.images),
                                [held[id(image.decoded)] for image in result.images], strict=True))
        self.collect_writes(block_above=self.look_ahead)

    def collect_writes(self, block_above: int) -> None:
        """Hands the rows of the oldest writes that are done to the sink and takes back their bytes, waiting for
        the oldest while more than `block_above` are pending."""
        while self.writing and (self.writing[0][0].done() or len(self.writing) > block_above):
            future, image_bytes = self.writing.popleft()
            self.sink.add_rows(future.result())
            self.held -= image_bytes

    def cancel(self) -> None:
        """Ctrl-C: the reads and the batch waiting for the model are dropped (the batch it runs and the writes under
        way finish)."""
        for future, _ in [*self.reading, *self.with_model]:
            future.cancel()

    def close(self) -> None:
        self.model.shutdown(wait=True, cancel_futures=True)  # the batch under way ends before the backend can
        self.pool.shutdown()
