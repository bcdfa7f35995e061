"""Engines schedule the stages (see stages/): they decide what runs where and when, and compute nothing.

An engine takes the images still to do and a `Sink` (the run's driver: the only writer of index.csv, which also
adds up costs and shows progress), and returns whether the run was interrupted. `local` runs the stages on one
machine, reading and writing on threads or worker processes (`workers`); `ray_data` runs them in Ray actors, one
per GPU of a server or a cluster. `registry` lists them (ENGINES): what each needs and how it is built.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from onnxcam.runner.costs import Costs
from onnxcam.runner.inputs.listing import ImageRef


class EngineError(RuntimeError):
    """The engine cannot start (Ray cannot be reached or started): one line naming the fix."""


class Sink(Protocol):
    def add_rows(self, rows: list[dict[str, object]]) -> None:
        """One image's index rows, all at once."""
        ...

    def add_costs(self, costs: Costs) -> None:
        """What one batch cost."""
        ...


class Engine(Protocol):
    provider: str  # what runs the model (a Ray engine's: what its actors reported, once they ran)
    precision: str  # what it computes in (f32, bf16, ...)
    notes: list[str]  # why it runs there (e.g. why not CUDA), printed before the run

    def run(self, todo: Iterator[ImageRef], sink: Sink) -> bool:
        """Runs every image of `todo`, handing rows and costs to `sink`; returns True when interrupted."""
        ...

    def describe(self) -> str:
        """Where the work runs, for the run's first line."""
        ...

    def facts(self) -> dict[str, object]:
        """What run.json says of the engine."""
        ...

    def close(self) -> None:
        """Releases what the engine holds beyond a run (may be called twice)."""
        ...
