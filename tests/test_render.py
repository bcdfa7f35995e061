"""Drawing maps for overlays: the 8-bit picture `draw` makes against the float heatmap it stands for, and the
colour tables against OpenCV's applyColorMap."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from onnxcam.runner.manifest import COLORMAPS, Overlays
from onnxcam.runner.outputs import render
from onnxcam.runner.size import Size


def random_case(rng: np.random.Generator, i: int) -> tuple[np.ndarray, tuple[int, int, int, int], int, int]:
    """A map (ReLU'd, signed or tiny) and a region (the whole picture or a centre-crop-like part of it)."""
    map_ = rng.normal(0, 1, rng.integers(3, 20, 2)).astype(np.float32)
    if i % 3 == 0:
        map_ = np.maximum(map_, 0)
    if i % 5 == 0:
        map_ *= np.float32(1e-6)
    width, height = (int(v) for v in rng.integers(16, 400, 2))
    if i % 2:
        return map_, (0, 0, width, height), width, height
    x0, y0 = int(rng.integers(0, width // 3)), int(rng.integers(0, height // 3))
    return map_, (x0, y0, width - x0, height - y0), width, height


def test_draw_is_the_heatmap_in_grey_levels_with_its_peak():
    rng = np.random.default_rng(0)
    differing = total = 0
    for i in range(300):
        map_, region, width, height = random_case(rng, i)
        values = render.heatmap(map_, region, Size(height, width))
        drawn, peak = render.draw(map_, region, Size(height, width), guided=False)
        expected = np.round(values * 255)
        assert drawn.dtype == np.uint8 and drawn.shape == (height, width)
        assert np.abs(drawn - expected).max() <= 1
        differing, total = differing + int((drawn != expected).sum()), total + drawn.size
        y, x = np.unravel_index(np.argmax(values), values.shape)
        assert peak == (x, y)
    assert differing / total < 1e-4


def test_draw_a_constant_map_is_zero_and_its_peak_the_first_pixel():
    drawn, peak = render.draw(np.full((7, 7), 3.0, np.float32), (0, 0, 40, 30), Size(30, 40), guided=False)
    assert not drawn.any() and peak == (0, 0)


def test_guided_image_is_pytorch_grad_cams_deprocess_image():
    from pytorch_grad_cam.utils.image import deprocess_image

    map_ = np.random.default_rng(1).normal(0, 1e-3, (3, 24, 32)).astype(np.float32)
    rgb = render.guided_image(map_, (0, 0, 32, 24), Size(24, 32))  # the model saw the whole picture, at its size
    assert rgb.shape == (24, 32, 3) and rgb.min() >= 0 and rgb.max() <= 1
    theirs = deprocess_image(map_.transpose(1, 2, 0).astype(np.float64))  # uint8, truncated
    assert np.abs(np.floor(rgb * 255) - theirs).max() <= 1  # float32 against float64 at a truncation's edge


def test_draw_a_guided_map_is_its_bgr_picture_and_its_peak_the_strongest_gradient():
    """Gradients all 0 but blue 288 at (x 5, y 2) and red -72 at (x 1, y 6), 288 values: mean 216 / 288 = 0.75,
    std sqrt((287.25^2 + 72.75^2 + 286 * 0.75^2) / 288) = 17.4768; each value (v - mean) / std * 0.1 + 0.5, clipped
    to [0, 1]: blue 2.144 -> 1 (255), red 0.0837 (21), the rest 0.49571 (126)."""
    map_ = np.zeros((3, 8, 12), np.float32)
    map_[2, 2, 5], map_[0, 6, 1] = 288, -72
    drawn, peak = render.draw(map_, (0, 0, 12, 8), Size(8, 12), guided=True)
    expected = np.full((8, 12, 3), 126, np.uint8)
    expected[2, 5, 0], expected[6, 1, 2] = 255, 21  # BGR
    np.testing.assert_array_equal(drawn, expected)
    assert peak == (5, 2), "the largest |gradient| over channels, as (x, y)"
    assert render.overlay(np.zeros_like(drawn), drawn, True, Overlays()) is drawn, "drawn as it is, not blended"


@pytest.mark.parametrize("colormap", sorted(COLORMAPS))
def test_overlay_is_opencvs_colormap_blended(colormap):
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    photo = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    style = Overlays(colormap=colormap, alpha=0.3)
    expected = cv2.addWeighted(cv2.applyColorMap(grey, COLORMAPS[colormap]), 0.3, photo, 0.7, 0)
    np.testing.assert_array_equal(render.overlay(photo, grey, False, style), expected)
