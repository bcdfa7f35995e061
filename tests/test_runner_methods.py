"""Method formulas on small hand-checked arrays, normalisation, image headers and progress output."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
from onnxcam.runner.inputs.decode import ImageError, header_size
from onnxcam.runner.inputs.listing import safe_key
from onnxcam.runner.methods import METHODS
from onnxcam.runner.methods.maps import normalise
from onnxcam.runner.progress import Progress
from onnxcam.runner.size import Size

RNG = np.random.default_rng(0)
A = np.maximum(RNG.standard_normal((2, 4, 3, 5)), 0).astype(np.float32)
G = RNG.standard_normal((2, 4, 3, 5)).astype(np.float32) * 1e-3


def test_gradcam_guided_weights_average_positive_gradients_where_activations_are_positive():
    out = {"activations": A, "gradients": G}
    weights = np.array([[np.mean([g if g > 0 and a > 0 else 0 for g, a in zip(G[n, c].ravel(), A[n, c].ravel(),
                                                                                  strict=True)])
                         for c in range(4)] for n in range(2)])
    expected = np.maximum((weights[:, :, None, None] * A).sum(axis=1), 0)
    np.testing.assert_allclose(METHODS["gradcam"](out, {"guided_weights": True}), expected, rtol=1e-5)
    plain = np.maximum((G.mean(axis=(2, 3))[:, :, None, None] * A).sum(axis=1), 0)
    np.testing.assert_allclose(METHODS["gradcam"](out, {"guided_weights": False}), plain, rtol=1e-5)


def test_cam_keeps_negative_evidence():
    weights = np.array([1.0, -2.0, 0.5, -1.0], np.float32)
    gradients = np.broadcast_to(weights[None, :, None, None] / 15, A.shape).copy()  # GAP->linear: w / (h w)
    cam = METHODS["cam"]({"activations": A, "gradients": gradients}, {})
    np.testing.assert_allclose(cam, np.einsum("c,nchw->nhw", weights, A), rtol=1e-5, atol=1e-6)
    assert (cam < 0).any()


def test_gradcam_plus_plus_ignores_non_positive_gradients():
    gradients = -np.abs(G)
    assert not METHODS["gradcam++"]({"activations": A, "gradients": gradients}, {}).any()


def test_eigencam_is_the_first_principal_component_projection():
    rows = A[0].reshape(4, -1).T.astype(np.float64)
    rows -= rows.mean(axis=0)
    _, _, vt = np.linalg.svd(rows)
    expected = np.maximum(rows @ vt[0], 0).reshape(3, 5)
    np.testing.assert_allclose(METHODS["eigencam"]({"activations": A}, {})[0], expected, rtol=1e-4, atol=1e-6)


def test_activations_by_channel_and_by_rank():
    out = {"activations": A, "gradients": G}
    maps = METHODS["activations"].maps("activations", out, {"channels": [3, 1], "top": 0, "rank_by": "mean"})
    assert list(maps) == ["activations.c3", "activations.c1"]
    np.testing.assert_array_equal(maps["activations.c3"][0], A[:, 3])
    assert list(maps["activations.c1"][1]) == [1, 1]

    for rank_by, score in (("mean", A.mean(axis=(2, 3))), ("gradcam", G.mean(axis=(2, 3)))):
        maps = METHODS["activations"].maps("activations", out, {"channels": [], "top": 2, "rank_by": rank_by})
        assert list(maps) == ["activations.top1", "activations.top2"]
        for n in range(2):
            first, second = np.argsort(-score[n])[:2]
            assert (maps["activations.top1"][1][n], maps["activations.top2"][1][n]) == (first, second)
            np.testing.assert_array_equal(maps["activations.top2"][0][n], A[n, second])
    assert METHODS["activations"].outputs_needed({"rank_by": "gradcam"}) == ("activations", "gradients")
    assert METHODS["activations"].outputs_needed({"rank_by": "mean"}) == ("activations",)


def test_normalise_is_exact_and_constant_maps_become_zero():
    maps = np.stack([np.full((3, 3), 7.0), np.arange(9.0).reshape(3, 3) * 1e-9])
    scaled = normalise(maps)
    assert not scaled[0].any()
    assert scaled[1].min() == 0 and scaled[1].max() == 1


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_header_size_reads_dimensions_without_decoding(ext):
    data = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))[1].tobytes()
    assert header_size(data) == Size(height=37, width=53)


def test_jpeg_header_walk_rejects_truncation_before_and_after_the_scan():
    data = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    for cut in (20, len(data) - 4):
        with pytest.raises(ImageError, match="truncated JPEG"):
            header_size(data[:cut])
    assert header_size(b"GIF89a" + struct.pack("<HH", 640, 480)) == Size(height=480, width=640)


@pytest.mark.parametrize("entry,key", [("../../etc/passwd", "etc/passwd"), ("/abs/a.jpg", "abs/a.jpg"),
                                       ("C:\\data\\x.png", "data/x.png"), ("./a/./b.jpg", "a/b.jpg"), ("..", "_")])
def test_safe_key_never_leaves_the_output_folder(entry, key):
    assert safe_key(entry) == key


def test_progress_prints_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(total=4, stream=stream, every_s=0.0)
    progress.update(1)
    progress.update(1, errors=1)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("onnxcam run: 2/4 images (50%), 1 errors, ") and "ETA" in lines[-1]
    assert "\r" not in stream.getvalue()
    quiet = io.StringIO()
    Progress(total=4, quiet=True, stream=quiet, every_s=0.0).update(4)
    assert quiet.getvalue() == ""
