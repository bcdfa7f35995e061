"""A segmenter that knows its classes: tools/tiny_segmenter.py trained here on synthetic scenes (no pretrained segmenter
ships offline), exported, and run over scenes it has not seen. Grad-CAM's peak must fall inside the explained class's
region (the scene's ground truth, not the model's prediction) on at least 90% of the rows, and inside another object's
region on few, over the predicted pixels and over given masks alike."""

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
from tiny_segmenter import train  # noqa: E402

SCENES = 24
INSIDE, ELSEWHERE = 0.9, 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("trained")
    train(folder / "segmenter.pth", seed=0)
    write_scenes(folder / "scenes", SCENES, seed=1)
    loaded = load_model("tiny_segmenter:build", folder / "segmenter.pth")
    loaded.input_size, loaded.labels = Size(SIZE, SIZE), list(CLASSES)
    export_explain_graph(loaded, "auto", folder / "segmenter.onnx", log=lambda _: None)
    return folder, folder / "segmenter.onnx"


def _peaks(folder: Path, graph: Path, name: str, **sections) -> tuple[list[dict[str, str]], dict[str, np.ndarray]]:
    run = folder / name
    run.mkdir()
    assert main(["run", str(write_manifest(run, graph, folder / "scenes" / "images", ("gradcam",), **sections)),
                 "--quiet"]) == 0
    truth = {path.name: np.asarray(Image.open(path)) for path in (folder / "scenes" / "masks").glob("*.png")}
    return [row for row in read_index(run / "out") if row["status"] == "ok"], truth


@pytest.mark.parametrize("targets", ["present", "masks"])
def test_gradcam_peaks_inside_the_explained_class(trained, targets):
    folder, graph = trained
    sections = {"targets": {"masks": {"dir": str(folder / "scenes" / "masks")}}} if targets == "masks" else {}
    rows, truth = _peaks(folder, graph, targets, **sections)
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
