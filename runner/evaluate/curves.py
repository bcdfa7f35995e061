"""Score curves drawn with OpenCV: every method's mean deletion/insertion curve, and each method's pair."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from onnxcam.runner.evaluate.aggregate import MethodFigures
from onnxcam.runner.evaluate.metrics import CURVES
from onnxcam.runner.outputs.files import write_atomic

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


def plot_all_curves(folder: Path, table: dict[str, MethodFigures]) -> list[Path]:
    """curves/<metric>.png (every method) and curves/<method>.png (deletion and insertion of one method)."""
    written = []
    axis = {"deletion": "fraction of pixels removed", "insertion": "fraction of pixels inserted"}
    for metric in CURVES:
        lines = [(f"{method}  AUC {s.figures[metric].mean:.3f}", curve) for method, s in table.items()
                 if (curve := s.mean_curve(metric)) is not None]
        if lines:
            written.append(folder / f"{metric}.png")
            plot_curves(written[-1], f"{metric}: mean target score over the dataset", axis[metric], lines)
    for method, entry in table.items():
        lines = [(f"{metric}  AUC {entry.figures[metric].mean:.3f}", curve) for metric in CURVES
                 if (curve := entry.mean_curve(metric)) is not None]
        if lines:
            written.append(folder / f"{method}.png")
            plot_curves(written[-1], f"{method}: mean deletion / insertion curves", "fraction of pixels", lines)
    return written
