"""What a batch cost: model seconds, and per method and per metric the rows, seconds and extra model passes.

The batch stage returns a `Costs` with every batch; the engine hands it to the run, which adds them up for
run.json. Costs travel with results (rather than living in the stage) so that stages in other processes
or on other machines report them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Cost:
    """What a method or metric cost: rows computed, seconds, extra model passes."""

    rows: int = 0
    seconds: float = 0.0
    model_passes: float = 0

    def add(self, other: Cost) -> None:
        self.rows += other.rows
        self.seconds += other.seconds
        self.model_passes += other.model_passes

    def as_json(self) -> dict[str, float]:
        rows = max(self.rows, 1)
        return {"rows": self.rows, "seconds": round(self.seconds, 3),
                "ms_per_row": round(1000 * self.seconds / rows, 3),
                "passes_per_row": round(self.model_passes / rows, 2)}


@dataclass
class Costs:
    model_seconds: float = 0.0  # the main pass
    extra_pass_seconds: float = 0.0  # perturbation methods' and metrics' passes
    methods: dict[str, Cost] = field(default_factory=dict)
    metrics: dict[str, Cost] = field(default_factory=dict)

    def add(self, other: Costs) -> None:
        self.model_seconds += other.model_seconds
        self.extra_pass_seconds += other.extra_pass_seconds
        for mine, theirs in ((self.methods, other.methods), (self.metrics, other.metrics)):
            for name, cost in theirs.items():
                mine.setdefault(name, Cost()).add(cost)

    def as_json(self) -> dict[str, dict[str, dict[str, float]]]:
        return {kind: {name: cost.as_json() for name, cost in costs.items()}
                for kind, costs in (("methods", self.methods), ("metrics", self.metrics))}
