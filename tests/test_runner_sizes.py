"""Sizes where the order shows: a picture wider than it is high and a model input wider than it is high. Every
size in onnxcam is (height, width); a (width, height) slipping in anywhere would transpose a map or misplace it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnxcam.runner.inputs.decode import decode_image, header_size
from onnxcam.runner.inputs.preprocess import model_region
from onnxcam.runner.manifest import load_manifest
from onnxcam.runner.model.graph import GraphInfo, Preprocessing, read_graph_info
from onnxcam.runner.outputs import render
from onnxcam.runner.run import Run
from onnxcam.runner.size import Size
from onnxcam.runner.stages.read import render_size
from runner_helpers import heatmap_at_image_size, read_index, write_manifest

PHOTO = Size(height=200, width=300)
MODEL = Size(height=24, width=40)  # 3 x 5 cells of 8 x 8 pixels
CELL = 8
SPOT = (265, 60)  # (x, y): in the top-right cell of the map, whether the model sees all of the photo or its centre


def photo(path: Path) -> Path:
    """A dark picture with one bright spot."""
    picture = np.zeros((PHOTO.height, PHOTO.width, 3), np.uint8)
    cv2.circle(picture, SPOT, 12, (255, 255, 255), -1)
    cv2.imwrite(str(path), picture)
    return path


class CellModel:
    """Activations [N,1,3,5]: the input's mean over each 8x8 cell; gradients 1, so Grad-CAM's map is the
    activations (positive where the picture is bright). Class 0 is always the top one."""

    provider, precision, notes = "numpy", "f32", []

    def run(self, outputs, inputs, targets):
        n = len(inputs)
        rows, cols = MODEL.height // CELL, MODEL.width // CELL
        activations = inputs.mean(axis=1).reshape(n, 1, rows, CELL, cols, CELL).mean(axis=(3, 5)) + 2
        logits = np.stack([np.ones(n), np.zeros(n)], axis=1).astype(np.float32)
        found = {"logits": logits, "activations": activations, "gradients": np.ones_like(activations)}
        return {name: found[name] for name in outputs}


def cell_graph(path: Path, resize: str) -> Path:
    """An ONNX file with the explain-graph metadata of a 24x40 model and nothing to run (CellModel runs)."""
    info = GraphInfo(Preprocessing(size=MODEL, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize=resize),
                     labels=["bright", "dark"], target_layer="cells", activation_shape=(1, 3, 5),
                     output_activation="softmax", outputs=["logits", "activations", "gradients"],
                     gap_linear_head=True, model="cells")
    node = helper.make_node("Identity", ["target"], ["logits"])
    value = helper.make_tensor_value_info
    graph = helper.make_graph([node], "metadata-only", [value("target", TensorProto.INT64, [None])],
                              [value("logits", TensorProto.INT64, [None])])
    model = helper.make_model(graph)
    helper.set_model_props(model, info.to_metadata())
    onnx.save(model, path)
    return path


def in_top_right_cell(x: float, y: float, region: tuple[int, int, int, int]) -> bool:
    """Whether (x, y) in the photo's pixels lies in what the map's top-right cell covers of the region."""
    x0, y0, x1, y1 = region
    return x0 + (x1 - x0) * 4 / 5 <= x < x1 and y0 <= y < y0 + (y1 - y0) / 3


def test_headers_decoding_and_drawing_say_height_then_width(tmp_path):
    path = photo(tmp_path / "wide.png")
    assert header_size(path.read_bytes()) == PHOTO
    image, size = decode_image(path, 10**6)
    assert size == PHOTO and image.shape == (200, 300, 3)
    assert render_size(PHOTO, 150) == Size(height=100, width=150)
    assert render_size(Size(height=300, width=200), 150) == Size(height=150, width=100)
    map_ = np.zeros((3, 5), np.float32)
    map_[0, 4] = 1  # the top-right cell
    heat = render.heatmap(map_, (0, 0, 300, 200), PHOTO)
    assert heat.shape == (200, 300) and in_top_right_cell(*np.unravel_index(heat.argmax(), heat.shape)[::-1],
                                                          (0, 0, 300, 200))


def test_a_centre_crop_of_a_wide_photo_for_a_wide_model_keeps_the_model_inputs_shape():
    x0, y0, x1, y1 = model_region(PHOTO, Preprocessing(size=MODEL, mean=(0, 0, 0), std=(1, 1, 1),
                                                       resize="center_crop"))
    assert abs(x0 + x1 - 300) <= 1 and abs(y0 + y1 - 200) <= 1, "centred"
    assert abs((x1 - x0) / (y1 - y0) - 40 / 24) < 0.01, "as wide for its height as the model input"
    assert y1 - y0 == round(200 * 0.875)


@pytest.mark.parametrize("resize", ["stretch", "center_crop"])
@pytest.mark.parametrize("max_side", ["original", 150])
def test_maps_overlays_and_index_place_the_map_where_it_belongs(resize, max_side, tmp_path):
    photo((tmp_path / "images").mkdir() or tmp_path / "images" / "wide.png")
    manifest = write_manifest(tmp_path, cell_graph(tmp_path / "cells.onnx", resize), tmp_path / "images",
                              output={"dir": str(tmp_path / "out"), "heatmaps": {"format": "npy"},
                                      "overlays": {"format": "png", "max_side": max_side}})
    assert Run(load_manifest(manifest), quiet=True, backend=CellModel()).run().ok == 1
    [row] = read_index(tmp_path / "out")
    region = tuple(int(row[f"region_{c}"]) for c in ("x0", "y0", "x1", "y1"))
    drawn = PHOTO if max_side == "original" else Size(height=100, width=150)
    assert (int(row["width"]), int(row["height"])) == (300, 200)
    assert (int(row["overlay_width"]), int(row["overlay_height"])) == (drawn.width, drawn.height)
    assert region == ((0, 0, 300, 200) if resize == "stretch" else model_region(PHOTO, Preprocessing(
        size=MODEL, mean=(0, 0, 0), std=(1, 1, 1), resize="center_crop")))
    assert np.load(tmp_path / "out" / row["heatmap_path"]).shape == (3, 5), "the map at its own resolution"
    assert in_top_right_cell(int(row["peak_x"]), int(row["peak_y"]), region)
    heat = heatmap_at_image_size(tmp_path / "out", row)
    assert heat.shape == (200, 300)
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert in_top_right_cell(x, y, region)
    overlay = cv2.imread(str(tmp_path / "out" / row["overlay_path"]))
    assert overlay.shape == (drawn.height, drawn.width, 3)
    scale = drawn.width / 300
    hot = overlay[int(int(row["peak_y"]) * scale), int(int(row["peak_x"]) * scale)].astype(int)
    cold = overlay[drawn.height - 1 - int(20 * scale), int(20 * scale)].astype(int)
    assert hot[2] - hot[0] > 30 and cold[0] - cold[2] > 30, "jet's red over the spot, its blue far from it"


def test_the_metadata_keeps_height_then_width_as_graphs_exported_before_wrote_it(tmp_path):
    written = read_graph_info(cell_graph(tmp_path / "cells.onnx", "stretch"))
    assert json.loads(written.to_metadata()["preprocessing"])["size"] == [24, 40]
    before = {"size": [24, 40], "mean": [0.5] * 3, "std": [0.25] * 3}  # as an earlier onnxcam wrote it
    info = GraphInfo.from_metadata(written.to_metadata() | {"preprocessing": json.dumps(before)})
    size = info.preprocessing.size
    assert isinstance(size, Size) and (size.height, size.width) == (24, 40)
