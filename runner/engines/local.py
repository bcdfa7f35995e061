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
from onnxcam.runner.stages.items import BatchResult

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
        stages = self.stages
        # Worker processes get reads in groups (a message per worker, not per image), so the look-ahead keeps a
        # second batch in flight and reads are handed out once a group's worth of room is free.
        look_ahead = (2 if self.processes else 1) * self.batch_size + 2 * self.workers
        group = max(1, self.batch_size // 4) if self.processes else 1
        reading: deque[tuple[Future, int]] = deque()  # (read, the bytes it holds)
        explaining: deque[tuple[Future[BatchResult], dict[int, int]]] = deque()  # (batch, its images' bytes)
        writing: deque[tuple[Future, int]] = deque()
        held = 0  # bytes of the images in flight, from their reads to their rows
        waiting: list[tuple[ImageRef, int]] = []  # the next image, when it does not fit yet
        pool: Workers = (ProcessWorkers if self.processes else ThreadWorkers)(stages, self.workers)
        model = ThreadPoolExecutor(1, thread_name_prefix="model")

        def refill() -> None:
            nonlocal held
            collect(block_above=len(writing))  # writes that are done give their bytes back
            if reading and look_ahead - len(reading) < group:
                return
            refs, sizes = [], []
            while len(reading) + len(refs) < look_ahead:
                if not waiting:
                    ref = next(todo, None)
                    if ref is None:
                        break
                    waiting.append((ref, stages.read.memory(ref)))
                ref, size = waiting[0]
                if held and held + size > self.memory_budget:
                    break
                waiting.clear()
                held += size
                refs.append(ref)
                sizes.append(size)
            reading.extend(zip(pool.submit_reads(refs), sizes, strict=True))

        def collect(block_above: int) -> None:
            nonlocal held
            while writing and (writing[0][0].done() or len(writing) > block_above):
                future, size = writing.popleft()
                sink.add_rows(future.result())
                held -= size

        def hand_over() -> None:
            """The model's oldest batch to the writers; while the model runs it, the writes that finish hand their
            rows to the sink and give their bytes back (more reads where the budget now lets them in)."""
            future, sizes = explaining.popleft()
            while writing and not future.done():
                wait([future, writing[0][0]], return_when=FIRST_COMPLETED)
                refill()
            result = future.result()
            sink.add_costs(result.costs)
            writing.extend(zip(pool.submit_writes(result.images),
                               [sizes[id(image.decoded)] for image in result.images], strict=True))
            collect(block_above=look_ahead)

        try:
            while True:
                refill()
                batch, sizes, decoded = [], {}, 0
                while decoded < self.batch_size and reading:
                    future, size = reading.popleft()
                    image = future.result()
                    batch.append(image)
                    sizes[id(image)] = size
                    decoded += not image.error  # images that failed to decode pass through without a model slot
                    refill()
                if batch:
                    explaining.append((model.submit(stages.explain, batch), sizes))
                    if len(explaining) == BATCHES_WITH_THE_MODEL:
                        hand_over()
                elif explaining:
                    hand_over()  # nothing more to read for now: the budget waits for these images' writes
                elif waiting:
                    collect(block_above=len(writing) - 1)  # the budget is full: wait for the oldest write
                else:
                    break
            collect(block_above=0)
        except KeyboardInterrupt:
            for future, _ in [*reading, *explaining]:
                future.cancel()
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C stops at once
            collect(block_above=0)  # keep what is finished; the rest is redone by the next run
            return True
        finally:
            model.shutdown(wait=True, cancel_futures=True)  # the batch under way ends before the backend can
            pool.shutdown()
        return False
