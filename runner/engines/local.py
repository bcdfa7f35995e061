"""The local engine: one machine, a thread pool that reads (decodes and preprocesses), the batch stage in the
calling thread, and a thread pool that writes.

Queues are bounded by counts (decoded images read ahead, writes pending), so memory does not grow with the
dataset. Ctrl-C (or SIGTERM, turned into KeyboardInterrupt by the CLI) stops reading, lets the writes that
are under way finish and hands their rows to the sink; the rest is redone by the next run.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from onnxcam.runner.engines import Sink
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.stages import Stages


class LocalEngine:
    def __init__(self, batch_size: int, workers: int):
        self.batch_size, self.workers = batch_size, workers

    def run(self, stages: Stages, todo: Iterator[ImageRef], sink: Sink) -> bool:
        """Runs every image of `todo`; returns True when interrupted."""
        look_ahead = self.batch_size + 2 * self.workers
        reading: deque[Future] = deque()
        writing: deque[Future] = deque()
        readers = ThreadPoolExecutor(self.workers, thread_name_prefix="read")
        writers = ThreadPoolExecutor(self.workers, thread_name_prefix="write")

        def refill() -> None:
            while len(reading) < look_ahead:
                ref = next(todo, None)
                if ref is None:
                    return
                reading.append(readers.submit(stages.read, ref))

        def collect(block_above: int) -> None:
            while writing and (writing[0].done() or len(writing) > block_above):
                sink.add_rows(writing.popleft().result())

        try:
            while True:
                refill()
                batch, decoded = [], 0
                while decoded < self.batch_size and reading:
                    image = reading.popleft().result()
                    refill()
                    batch.append(image)
                    decoded += not image.error  # images that failed to decode pass through without a model slot
                if not batch:
                    break
                result = stages.explain(batch)
                sink.add_costs(result.costs)
                writing.extend(writers.submit(stages.write, image) for image in result.images)
                collect(block_above=look_ahead)
            collect(block_above=0)
        except KeyboardInterrupt:
            for future in reading:
                future.cancel()
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C stops at once
            collect(block_above=0)  # keep what is finished; the rest is redone by the next run
            return True
        finally:
            readers.shutdown(wait=False, cancel_futures=True)
            writers.shutdown(wait=True)
        return False
