"""Engines schedule the stages (see stages/): they decide what runs where and when, and compute nothing.

An engine takes the stages, the images still to do, and a `Sink` (the run's driver: the only writer of
index.csv, which also adds up costs and shows progress). It returns whether the run was interrupted.
`local` runs on one machine with thread pools; a distributed engine is one more module here.
"""

from __future__ import annotations

from typing import Protocol

from onnxcam.runner.costs import Costs


class Sink(Protocol):
    def add_rows(self, rows: list[dict[str, object]]) -> None:
        """One image's index rows, all at once."""
        ...

    def add_costs(self, costs: Costs) -> None:
        """What one batch cost."""
        ...
