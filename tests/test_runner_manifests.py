"""Every manifest shipped in manifests/ runs (on a copy of the demo layout), and the demo's Grad-CAM for the
cat classes sits on the cat."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from onnxcam.runner.cli import main
from runner_helpers import heatmap_at_image_size, read_index
from sample_photos import write_photos

pytestmark = pytest.mark.slow  # the bundled pretrained model's export and the demo runs: `make test` only

# demo-segmentation.yaml needs the segmenter trained on synthetic scenes: test_segmentation_trained.py runs it
MANIFESTS = sorted(path for path in (Path(__file__).parent.parent / "manifests").glob("*.yaml")
                   if path.name != "demo-segmentation.yaml")
CAT_FACE = (110, 20, 360, 290)  # x0, y0, x1, y1 of chelsea's head in the 451x300 photo


@pytest.fixture(scope="module")
def demo_layout(exported, tmp_path_factory) -> Path:
    """tmp/{manifests, exports/efficientnet-lite0.onnx, demo/images} as `make demo` leaves them."""
    root = tmp_path_factory.mktemp("layout")
    shutil.copytree(Path(__file__).parent.parent / "manifests", root / "manifests")
    (root / "exports").mkdir()
    (root / "exports" / "efficientnet-lite0.onnx").symlink_to(exported("efficientnet-lite0")[1].path)
    write_photos(root / "demo" / "images")
    return root


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_shipped_manifest_runs(demo_layout, manifest, capsys):
    assert main(["run", str(demo_layout / "manifests" / manifest.name), "--quiet"]) == 0
    done = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("onnxcam run: done:"))
    assert " 0 errors" in done, done


def test_demo_gradcam_sits_on_the_cat(demo_layout, capsys):
    out = demo_layout / "demo" / "out"
    if not (out / "index.csv").exists():
        assert main(["run", str(demo_layout / "manifests" / "demo.yaml"), "--quiet"]) == 0
    rows = [row for row in read_index(out) if row["image"] == "chelsea.jpg" and row["method"] == "gradcam"]
    assert {row["pred_label"] for row in rows} <= {"tabby", "tiger cat", "Egyptian cat"}
    x0, y0, x1, y1 = CAT_FACE
    for row in rows:
        assert row["target_label"] in ("tabby", "tiger cat", "Egyptian cat")
        assert x0 <= int(row["peak_x"]) < x1 and y0 <= int(row["peak_y"]) < y1, row
        heat = heatmap_at_image_size(out, row)
        inside = heat[y0:y1, x0:x1].mean()
        outside = (heat.sum() - heat[y0:y1, x0:x1].sum()) / (heat.size - heat[y0:y1, x0:x1].size)
        assert inside > 2 * outside, f"{row['target_label']}: heat on the cat {inside:.2f}, elsewhere {outside:.2f}"
