"""A segmenter that knows its classes: tools/tiny_segmenter.py trained here on synthetic scenes (no pretrained segmenter
ships offline; held-out mIoU above 0.8), exported, and run over scenes it has not seen, as `make demo` does
(manifests/demo-segmentation.yaml). Grad-CAM's peak must fall inside the explained class's region (the scene's ground
truth, not the model's prediction) on at least 90% of the rows, and inside another object's region on few, over the
predicted pixels and over given masks alike."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # trains a model (about two CPU minutes)

from onnxcam.exporter.export import export_explain_graph  # noqa: E402
from onnxcam.exporter.sources import load_model  # noqa: E402
from onnxcam.runner.cli import main  # noqa: E402
from onnxcam.runner.size import Size  # noqa: E402
from runner_helpers import read_index, write_manifest  # noqa: E402
from segmentation_scenes import CLASSES, IGNORE, SIZE, write_scenes  # noqa: E402
from tiny_segmenter import HELD_OUT, HELD_OUT_SEED, iou_per_class, scenes_tensors, train  # noqa: E402

SCENES = 24
INSIDE, ELSEWHERE = 0.9, 0.05


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """tmp/{manifests, exports/tiny-segmenter.onnx, demo/segmentation} as `make demo` leaves them."""
    root = tmp_path_factory.mktemp("layout")
    scenes, exports = root / "demo" / "segmentation", root / "exports"
    shutil.copytree(Path(__file__).parent.parent / "manifests", root / "manifests")
    model = train(scenes / "segmenter.pth", seed=0)
    ious = iou_per_class(model, *scenes_tensors(HELD_OUT_SEED, HELD_OUT))
    # measured on an AMD EPYC: mIoU 0.987, the least class 0.977 (tools/tiny_segmenter.py's docstring); a model stuck
    # on the plateau before it tells the shapes apart scores about 0.5, squares 0.2 to 0.3
    assert np.mean(ious) > 0.8 and min(ious) > 0.6, ious
    write_scenes(scenes, SCENES, seed=1)
    loaded = load_model("tiny_segmenter:build", scenes / "segmenter.pth")
    loaded.input_size, loaded.labels = Size(SIZE, SIZE), list(CLASSES)
    exports.mkdir()
    export_explain_graph(loaded, "decoder.fuse", exports / "tiny-segmenter.onnx", log=lambda _: None)  # as make demo
    return root


def _rows(out: Path) -> list[dict[str, str]]:
    return [row for row in read_index(out) if row["status"] == "ok" and row["method"] == "gradcam"]


@pytest.mark.parametrize("targets", ["present", "masks"])
def test_gradcam_peaks_inside_the_explained_class(layout, targets, capsys):
    scenes = layout / "demo" / "segmentation"
    if targets == "present":  # the demo's own manifest
        assert main(["run", str(layout / "manifests" / "demo-segmentation.yaml"), "--quiet"]) == 0
        done = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("onnxcam run: done:"))
        assert " 0 errors" in done, done
        rows = _rows(scenes / "out")
        assert all(row["energy_inside"] for row in rows)
    else:
        run = layout / "given"
        run.mkdir()
        manifest = write_manifest(run, layout / "exports" / "tiny-segmenter.onnx", scenes / "images",
                                  targets={"masks": {"dir": str(scenes / "masks")}})
        assert main(["run", str(manifest), "--quiet"]) == 0
        rows = _rows(run / "out")
    truth = {path.name: np.asarray(Image.open(path)) for path in (scenes / "masks").glob("*.png")}
    assert len(rows) >= SCENES, "fewer rows than scenes: every scene has at least one object"
    assert all(row["target_mask"] == ("given" if targets == "masks" else "predicted") for row in rows)
    inside = elsewhere = 0
    for row in rows:
        label = truth[Path(row["image"]).name]  # an indexed PNG: Pillow gives its indices, the classes
        at_peak = int(label[int(row["peak_y"]), int(row["peak_x"])])
        inside += at_peak == int(row["target_class"])
        elsewhere += at_peak not in (int(row["target_class"]), 0, IGNORE)
    print(f"{targets}: {len(rows)} rows, peak inside the class {inside / len(rows):.1%}, "
          f"inside another object {elsewhere / len(rows):.1%}")
    assert inside / len(rows) >= INSIDE
    assert elsewhere / len(rows) <= ELSEWHERE
