"""Where the local engine's read and write tasks run: `ThreadWorkers`, two thread pools sharing the stages."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.stages import Stages
from onnxcam.runner.stages.items import DecodedImage, ImageResult
from onnxcam.runner.stages.write import IndexRow


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
