"""summary.csv, the printed table and the mean deletion/insertion curves, all read back from index.csv.

Reading the index (rather than keeping figures in memory) makes a resumed run's summary cover the
rows of earlier runs too; the read streams, so memory stays flat.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from onnxcam.runner.faithfulness import CURVES
from onnxcam.runner.render import write_atomic


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
class MethodSummary:
    figures: dict[str, Figure]
    curves: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> sum of curves
    curve_counts: dict[str, int] = field(default_factory=dict)

    def mean_curve(self, name: str) -> np.ndarray | None:
        return self.curves[name] / self.curve_counts[name] if self.curve_counts.get(name) else None


def summarise(index: Path, methods: list[str], metrics: list[str]) -> dict[str, MethodSummary]:
    table = {method: MethodSummary({metric: Figure() for metric in metrics}) for method in methods}
    with open(index, encoding="utf-8", newline="") as rows:
        for row in csv.DictReader(rows):
            summary = table.get(row["method"])
            if row["status"] != "ok" or summary is None:
                continue
            for metric in metrics:
                if row.get(metric):
                    summary.figures[metric].add(float(row[metric]))
                curve_text = row.get(f"{metric}_curve")
                if curve_text:
                    curve = np.array(curve_text.split(), np.float64)
                    if metric not in summary.curves:
                        summary.curves[metric], summary.curve_counts[metric] = np.zeros_like(curve), 0
                    if curve.shape == summary.curves[metric].shape:
                        summary.curves[metric] += curve
                        summary.curve_counts[metric] += 1
    return table


def write_summary_csv(path: Path, table: dict[str, MethodSummary], metrics: list[str]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["method", *(f"{metric}_{part}" for metric in metrics for part in ("mean", "std", "count"))])
    for method, summary in table.items():
        cells = []
        for metric in metrics:
            figure = summary.figures[metric]
            cells += [f"{figure.mean:.6g}", f"{figure.std:.6g}", figure.count] if figure.count else ["", "", 0]
        writer.writerow([method, *cells])
    write_atomic(path, buffer.getvalue().encode("utf-8"))


def format_table(table: dict[str, MethodSummary], metrics: list[str]) -> str:
    """method | metric mean ± std (n) ..., one line per method."""
    width = max(len("method"), *(len(method) for method in table))
    cells = {metric: [] for metric in metrics}
    for summary in table.values():
        for metric in metrics:
            figure = summary.figures[metric]
            cells[metric].append(f"{figure.mean:.3f} ± {figure.std:.3f} ({figure.count})" if figure.count else "-")
    widths = {metric: max(len(metric), *(len(cell) for cell in cells[metric])) for metric in metrics}
    lines = ["  ".join([f"{'method':<{width}}", *(f"{metric:>{widths[metric]}}" for metric in metrics)])]
    for k, method in enumerate(table):
        lines.append("  ".join([f"{method:<{width}}", *(f"{cells[m][k]:>{widths[m]}}" for m in metrics)]))
    return "\n".join(lines)


# -- curves ----------------------------------------------------------------------------------------------------

COLORS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
          (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]  # BGR, matplotlib's tab10
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 960, 460, 70, 280, 40, 60  # the legend sits right of the axes


def plot_curves(path: Path, title: str, x_label: str, lines: list[tuple[str, np.ndarray]]) -> None:
    """A line chart of score curves (x from 0 to 1) drawn with OpenCV, written as PNG."""
    canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    x0, y0, x1, y1 = LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT, TOP
    top = max(1e-6, max(float(curve.max()) for _, curve in lines)) if lines else 1.0
    top = 1.0 if top > 0.5 else float(np.ceil(top * 10) / 10)

    def point(x: float, y: float) -> tuple[int, int]:
        return round(x0 + x * (x1 - x0)), round(y0 - y / top * (y0 - y1))

    font = cv2.FONT_HERSHEY_SIMPLEX
    for k in range(5):
        fraction = k / 4
        gx, _ = point(fraction, 0)
        _, gy = point(0, fraction * top)
        cv2.line(canvas, (gx, y0), (gx, y1), (230, 230, 230), 1)
        cv2.line(canvas, (x0, gy), (x1, gy), (230, 230, 230), 1)
        cv2.putText(canvas, f"{fraction:.2f}", (gx - 16, y0 + 20), font, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
        cv2.putText(canvas, f"{fraction * top:.3g}", (x0 - 45, gy + 5), font, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (x0, y1), (x1, y0), (0, 0, 0), 1)
    cv2.putText(canvas, title, (x0, 26), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, x_label, (x0 + 150, HEIGHT - 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (_, curve) in enumerate(lines):
        xs = np.linspace(0, 1, len(curve))
        points = np.array([point(x, y) for x, y in zip(xs, curve, strict=True)], np.int32)
        cv2.polylines(canvas, [points], False, COLORS[k % len(COLORS)], 2, cv2.LINE_AA)
    legend_x = x1 + 20
    for k, (label, _) in enumerate(lines):
        color, y = COLORS[k % len(COLORS)], y1 + 22 + 20 * k
        cv2.line(canvas, (legend_x, y - 4), (legend_x + 22, y - 4), color, 2, cv2.LINE_AA)
        cv2.putText(canvas, label, (legend_x + 30, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    ok, data = cv2.imencode(".png", canvas)
    if ok:
        write_atomic(path, data.tobytes())


def plot_all_curves(folder: Path, table: dict[str, MethodSummary]) -> list[Path]:
    """curves/<metric>.png (every method) and curves/<method>.png (deletion and insertion of one method)."""
    written = []
    axis = {"deletion": "fraction of pixels removed", "insertion": "fraction of pixels inserted"}
    for metric in CURVES:
        lines = [(f"{method}  AUC {s.figures[metric].mean:.3f}", curve) for method, s in table.items()
                 if (curve := s.mean_curve(metric)) is not None]
        if lines:
            written.append(folder / f"{metric}.png")
            plot_curves(written[-1], f"{metric}: mean target score over the dataset", axis[metric], lines)
    for method, summary in table.items():
        lines = [(f"{metric}  AUC {summary.figures[metric].mean:.3f}", curve) for metric in CURVES
                 if (curve := summary.mean_curve(metric)) is not None]
        if lines:
            written.append(folder / f"{method}.png")
            plot_curves(written[-1], f"{method}: mean deletion / insertion curves", "fraction of pixels", lines)
    return written
