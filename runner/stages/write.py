"""The write stage: one image's results -> its heatmap, overlay and thumbnail files under output.dir, and its index
rows (with the metrics scored on the rendered map, such as the pointing game). Any failure while writing turns the
image into one error row; nothing here touches index.csv itself, which only the run's driver appends to.

Thumbnails (for report.html's gallery) are drawn at their own small size from the map, not scaled down from the
full overlay, so they cost a few hundred microseconds whatever the photograph's size.

A segmenter's row is a region: its overlays and thumbnails have the region's outline drawn on them, its mask is
written once per (image, class) as `<image>.mask.<class>.png` (at the overlay's size), and with output.label_maps the
image's predicted label map as `<image>.label_map.png` (an indexed PNG at the model output's size)."""

from __future__ import annotations

import numpy as np
from onnxcam.runner.config import Evaluation, Manifest, ManifestError, Overlays
from onnxcam.runner.evaluate.boxes import read_boxes
from onnxcam.runner.evaluate.metrics import MetricRow, Scoring, score, wanted
from onnxcam.runner.methods import index_names, method_of
from onnxcam.runner.outputs import render
from onnxcam.runner.outputs.files import SCRATCH, inside, write_atomic
from onnxcam.runner.outputs.formats import HEATMAP_FORMATS, OVERLAY_FORMATS, label_map_png, mask_png, overlay_jpg
from onnxcam.runner.outputs.thumbnails import THUMBNAIL_QUALITY, photo_thumbnail_path, thumbnail_path
from onnxcam.runner.size import Size
from onnxcam.runner.stages.items import DecodedImage, ImageResult, TargetResult, one_line
from onnxcam.runner.stages.read import render_size

IndexRow = dict[str, object]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, np.ndarray):
        return " ".join(f"{v:.4g}" for v in value)
    return f"{value:.6g}"


def label_map_path(key: str) -> str:
    return f"{key}.label_map.png"


class WriteStage:
    def __init__(self, manifest: Manifest, labels: list[str], segmenter: bool = False):
        self.output_dir, self.labels, self.segmenter = manifest.output_dir, labels, segmenter
        self.label_maps = manifest.label_maps and segmenter
        self.methods = index_names(manifest.methods)
        self.heatmaps, self.overlays = manifest.heatmaps, manifest.overlays
        self.thumbnails, self.thumbnail_style = manifest.thumbnails, manifest.overlays or Overlays()
        self.evaluation: Evaluation | None = manifest.evaluate
        boxes = {}
        if self.evaluation and self.evaluation.boxes:
            try:
                boxes = read_boxes(self.evaluation.boxes, labels)
            except ValueError as error:
                raise ManifestError(f"{manifest.path}: {error}") from None
        self.scoring = Scoring(boxes=boxes)

    def __call__(self, result: ImageResult) -> list[IndexRow]:
        if result.error:
            return [self._row(result, status="error", error=result.error)]
        try:
            small = self._photo_thumbnail(result.decoded) if self.thumbnails else None
            if self.label_maps and result.label_map is not None:
                self._save(label_map_path(result.decoded.ref.key), label_map_png(result.label_map))
            if not result.targets:
                return [self._row(result, status="no_target")]
            rows = []
            for target in result.targets:
                masks, cells = self._region(result, target, small)
                rows += [self._write(result, target, method, small, masks) | cells for method in self.methods]
            return rows
        except Exception as error:  # noqa: BLE001 - a full disk or an odd image must not stop the run
            return [self._row(result, status="error", error=f"cannot write outputs ({one_line(error)})")]

    def _photo_thumbnail(self, decoded: DecodedImage) -> np.ndarray:
        """The photograph at thumbnail size (BGR), written as thumbs/<key>.photo.jpg."""
        small = render.shrink(decoded.image, render_size(Size(*decoded.image.shape[:2]), self.thumbnails))
        self._save(photo_thumbnail_path(decoded.ref.key), overlay_jpg(small, THUMBNAIL_QUALITY))
        return small

    def _thumbnail(self, map_: np.ndarray, guided: bool, decoded: DecodedImage, small: np.ndarray,
                   mask: np.ndarray | None) -> bytes:
        """An overlay at thumbnail size, drawn from the map at that size (a segmenter's with its region outlined)."""
        size = Size(*small.shape[:2])
        drawn, _ = render.draw(map_, render.scaled(decoded.region, decoded.size, size), size, guided)
        picture = render.overlay(small, drawn, guided, self.thumbnail_style)
        return overlay_jpg(picture if mask is None else render.outline(picture, mask), THUMBNAIL_QUALITY)

    def _region(self, result: ImageResult, target: TargetResult, small: np.ndarray | None
                ) -> tuple[tuple[np.ndarray, np.ndarray | None] | None, IndexRow]:
        """A segmenter's row: its region drawn at the overlay's and the thumbnail's sizes (None where the row has no
        region), the mask file written, and its index cells."""
        if not self.segmenter:
            return None, {}
        cells: IndexRow = {"target_mask": target.mask_kind, "target_share": _cell(target.share), "mask_file": ""}
        if target.mask is None:
            return None, cells
        decoded = result.decoded
        drawn = render.region_mask(target.mask, render.scaled(decoded.region, decoded.size, decoded.render_size),
                                   decoded.render_size)
        cells["mask_file"] = f"{decoded.ref.key}.mask.{target.target_class}.png"
        self._save(cells["mask_file"], mask_png(drawn))
        thumbnail = None
        if small is not None:
            size = Size(*small.shape[:2])
            thumbnail = render.region_mask(target.mask, render.scaled(decoded.region, decoded.size, size), size)
        return (drawn, thumbnail), cells

    def _write(self, result: ImageResult, target: TargetResult, method: str, small: np.ndarray | None,
               masks: tuple[np.ndarray, np.ndarray | None] | None = None) -> IndexRow:
        decoded, guided = result.decoded, method_of(method).guided
        map_ = target.maps[method]
        size = decoded.render_size
        region = render.scaled(decoded.region, decoded.size, size)
        drawn, peak = render.draw(map_, region, size, guided)
        stem = f"{decoded.ref.key}.{method}.{target.target_class}"
        cells: IndexRow = {"heatmap_path": "", "overlay_path": "", "overlay_width": "", "overlay_height": ""}
        if self.heatmaps.format != "none":
            cells["heatmap_path"] = f"{stem}.{self.heatmaps.format}"
            stored = (render.compact(map_, guided) if self.heatmaps.size != "original"
                      else (render.guided_image if guided else render.heatmap)(map_, region, size))
            self._save(cells["heatmap_path"], HEATMAP_FORMATS[self.heatmaps.format](stored, guided))
        if self.overlays is not None:
            cells["overlay_path"] = f"{stem}.{self.overlays.format}"
            picture = render.overlay(decoded.image, drawn, guided, self.overlays)
            picture = picture if masks is None else render.outline(picture, masks[0])
            self._save(cells["overlay_path"], OVERLAY_FORMATS[self.overlays.format](picture, self.overlays.quality))
            cells["overlay_width"], cells["overlay_height"] = size.width, size.height
        if small is not None:
            self._save(thumbnail_path(stem), self._thumbnail(map_, guided, decoded, small, masks and masks[1]))
        x, y = render.in_image_pixels(peak, decoded.size, size)
        return self._row(result, target_class=target.target_class, target_label=self.labels[target.target_class],
                         target_score=f"{target.score:.6g}", method=method, channel=target.channels.get(method, ""),
                         peak_x=x, peak_y=y, **cells,
                         **self._metric_cells(result, target, method, (x, y)))

    def _save(self, relative: str, data: bytes) -> None:
        write_atomic(inside(self.output_dir, relative), data, scratch=self.output_dir / SCRATCH)

    def _metric_cells(self, result: ImageResult, target: TargetResult, method: str, peak: tuple[int, int]
                      ) -> dict[str, str]:
        if not self.evaluation:
            return {}
        values = dict(target.metrics.get(method, {}))
        if wanted(self.evaluation, runs_model=False):
            row = MetricRow(target.target_class, target.score, image=result.decoded.ref.key, peak=peak)
            values |= score(self.evaluation, [row], self.scoring, runs_model=False)[0]
        return {key: _cell(value) for key, value in values.items()}

    def _row(self, result: ImageResult, **values) -> IndexRow:
        decoded = result.decoded
        row: IndexRow = {"image": decoded.ref.key, "status": "ok", "width": decoded.size.width or "",
                         "height": decoded.size.height or ""}
        if decoded.tensor is not None:
            row.update(zip(("region_x0", "region_y0", "region_x1", "region_y1"), decoded.region, strict=True))
        if result.pred is not None:
            row.update(pred_class=result.pred[0], pred_label=self.labels[result.pred[0]],
                       pred_score=f"{result.pred[1]:.6g}")
        return row | values
