"""summary.csv, the printed table and the mean deletion/insertion curves, all read back from index.csv.

Reading the index (rather than keeping figures in memory) makes a resumed run's summary cover the
rows of earlier runs too; the read streams, so memory stays flat.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnxcam.runner.outputs.files import write_atomic


@dataclass
class Figure:
    count: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.squares += value * value

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); 0 for a single row."""
        if self.count < 2:
            return 0.0
        return float(np.sqrt(max(0.0, (self.squares - self.total ** 2 / self.count) / (self.count - 1))))


@dataclass
class MethodFigures:
    figures: dict[str, Figure]
    curves: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> sum of curves
    curve_counts: dict[str, int] = field(default_factory=dict)

    def mean_curve(self, name: str) -> np.ndarray | None:
        return self.curves[name] / self.curve_counts[name] if self.curve_counts.get(name) else None


class FigureTable:
    """Figures per method and metric, added one index row at a time; methods appear as their rows do."""

    def __init__(self, methods: list[str], metrics: list[str]):
        self.metrics = metrics
        self.methods = {method: MethodFigures({metric: Figure() for metric in metrics}) for method in methods}

    def add(self, row: dict[str, str]) -> None:
        """One index row (ok rows only count)."""
        if row["status"] != "ok":
            return
        entry = self.methods.get(row["method"])
        if entry is None:
            entry = self.methods[row["method"]] = MethodFigures({metric: Figure() for metric in self.metrics})
        for metric in self.metrics:
            if row.get(metric):
                entry.figures[metric].add(float(row[metric]))
            curve_text = row.get(f"{metric}_curve")
            if curve_text:
                curve = np.array(curve_text.split(), np.float64)
                if metric not in entry.curves:
                    entry.curves[metric], entry.curve_counts[metric] = np.zeros_like(curve), 0
                if curve.shape == entry.curves[metric].shape:
                    entry.curves[metric] += curve
                    entry.curve_counts[metric] += 1


def read_figures(index: Path, methods: list[str], metrics: list[str]) -> dict[str, MethodFigures]:
    """The figures of the manifest's methods over every row of index.csv."""
    table = FigureTable(methods, metrics)
    with open(index, encoding="utf-8", newline="") as rows:
        for row in csv.DictReader(rows):
            if row["method"] in table.methods:
                table.add(row)
    return table.methods


def write_summary_csv(path: Path, table: dict[str, MethodFigures], metrics: list[str]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["method", *(f"{metric}_{part}" for metric in metrics for part in ("mean", "std", "count"))])
    for method, entry in table.items():
        cells = []
        for metric in metrics:
            figure = entry.figures[metric]
            cells += [f"{figure.mean:.6g}", f"{figure.std:.6g}", figure.count] if figure.count else ["", "", 0]
        writer.writerow([method, *cells])
    write_atomic(path, buffer.getvalue().encode("utf-8"))


def format_table(table: dict[str, MethodFigures], metrics: list[str]) -> str:
    """method | metric mean ± std (n) ..., one line per method."""
    width = max(len("method"), *(len(method) for method in table))
    cells = {metric: [] for metric in metrics}
    for entry in table.values():
        for metric in metrics:
            figure = entry.figures[metric]
            cells[metric].append(f"{figure.mean:.3f} ± {figure.std:.3f} ({figure.count})" if figure.count else "-")
    widths = {metric: max(len(metric), *(len(cell) for cell in cells[metric])) for metric in metrics}
    lines = ["  ".join([f"{'method':<{width}}", *(f"{metric:>{widths[metric]}}" for metric in metrics)])]
    for k, method in enumerate(table):
        lines.append("  ".join([f"{method:<{width}}", *(f"{cells[m][k]:>{widths[m]}}" for m in metrics)]))
    return "\n".join(lines)
