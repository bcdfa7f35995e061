"""Methods localise: a small CNN trained here (CPU, seconds) to name the colour of one square placed at random.

Grad-CAM's peak must land on the square (pointing game >= 90%, better than always pointing at the centre),
and keeping what Grad-CAM marks must keep the score better than a random map does (lower average drop).
"""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # exports and runs real models: `make test` only

from onnxcam.exporter.export import export_explain_graph  # noqa: E402
from onnxcam.exporter.sources import LoadedModel  # noqa: E402
from onnxcam.runner.cli import main  # noqa: E402
from onnxcam.runner.evaluate import metrics  # noqa: E402
from onnxcam.runner.evaluate.metrics import (  # noqa: E402
    Evaluation,
    MetricRow,
    Scoring,
    points_at,  # noqa: E402
)
from onnxcam.runner.inputs.preprocess import to_input  # noqa: E402
from onnxcam.runner.model.backend import OnnxRuntimeBackend  # noqa: E402
from onnxcam.runner.model.graph import probabilities, read_graph_info  # noqa: E402
from onnxcam.runner.model.passes import ExtraPasses  # noqa: E402
from runner_helpers import read_index, write_manifest  # noqa: E402

COLOURS = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.1, 0.2, 0.9)}  # RGB
SIZE, SCALE = 64, 3  # the model sees 64x64; the files on disk are 192x192, so the 15 px tolerance is 5 model px
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def scene(rng: np.random.Generator, scale: int = 1) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """RGB float image in [0,1]: a grey textured background and one coloured square, both of random brightness
    (so that the class is the hue, and a darkened image, as average drop makes, is not out of distribution).
    Returns (image, class, box)."""
    size = SIZE * scale
    texture = rng.uniform(0, 0.7) + rng.uniform(-0.15, 0.15, (8, 8, 1)).astype(np.float32)
    image = np.repeat(cv2.resize(texture, (size, size), interpolation=cv2.INTER_CUBIC)[:, :, None], 3, axis=2)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    klass = int(rng.integers(len(COLOURS)))
    side = int(rng.integers(9, 14)) * scale
    x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
    image[y0:y0 + side, x0:x0 + side] = np.array(list(COLOURS.values())[klass]) * rng.uniform(0.3, 1)
    return np.clip(image, 0, 1), klass, (x0, y0, x0 + side - 1, y0 + side - 1)


def small_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, len(COLOURS)),
    )


def train(model: torch.nn.Module, steps: int = 250) -> float:
    """Returns the accuracy on fresh scenes."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]

    def batch(n):
        scenes = [scene(rng) for _ in range(n)]
        x = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2)
        return (x - mean) / std, torch.tensor([s[1] for s in scenes])

    model.train()
    for _ in range(steps):
        x, y = batch(32)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    x, y = batch(200)
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)  # the weights' initialisation too, not only the training: whatever ran before in the process
    model = small_cnn()
    accuracy = train(model)
    assert accuracy >= 0.95, f"the test model did not learn its task ({accuracy:.0%})"
    folder = tmp_path_factory.mktemp("localisation")
    loaded = LoadedModel(model, "test:small_cnn", (SIZE, SIZE), MEAN, STD, labels=list(COLOURS))
    result = export_explain_graph(loaded, "auto", folder / "small_cnn.onnx", guided=False, log=lambda _: None)
    return folder, result.path


@pytest.fixture(scope="module")
def scenes(trained):
    """40 scenes on disk at 192x192, with boxes.csv (the square, named by its colour) and labels.csv."""
    folder, _ = trained
    rng = np.random.default_rng(123)
    images, boxes, labels = folder / "images", [], []
    images.mkdir()
    for i in range(40):
        image, klass, box = scene(rng, SCALE)
        cv2.imwrite(str(images / f"{i:02d}.png"), np.round(image[:, :, ::-1] * 255).astype(np.uint8))
        boxes.append([f"{i:02d}.png", *box, list(COLOURS)[klass]])
        labels.append([f"{i:02d}.png", klass])
    for name, rows in (("boxes.csv", boxes), ("labels.csv", labels)):
        with open(folder / name, "w", newline="") as file:
            csv.writer(file).writerows(rows)
    return images, boxes, labels


def centre_hits(boxes) -> float:
    """The pointing game of always pointing at the centre (the baseline a method must beat)."""
    centre = (SIZE * SCALE // 2, SIZE * SCALE // 2)
    return np.mean([points_at(centre, [(*b[1:5], None)], 0) for b in boxes])


def test_gradcam_points_at_the_object_and_beats_a_random_map(trained, scenes, capsys):
    folder, model = trained
    images, boxes, labels = scenes
    evaluate = {"metrics": ["average_drop", "pointing_game"], "boxes": str(folder / "boxes.csv")}
    manifest = write_manifest(folder, model, images, methods=["gradcam"],
                              targets={"labels": str(folder / "labels.csv")}, evaluate=evaluate)
    assert main(["run", str(manifest), "--quiet"]) == 0
    printed = capsys.readouterr().out
    rows = read_index(folder / "out")
    assert len(rows) == 40 and all(row["status"] == "ok" for row in rows)

    pointing = np.mean([float(row["pointing_game"]) for row in rows])
    centre = centre_hits(boxes)
    gradcam_drop = np.mean([float(row["average_drop"]) for row in rows])

    info = read_graph_info(model)
    backend = OnnxRuntimeBackend(model, ["cpu"])
    passes = ExtraPasses(backend, info)
    random = np.random.default_rng(7)
    random_rows = []
    for row, (_, klass) in zip(rows, labels, strict=True):
        x = to_input(cv2.imread(str(images / row["image"])), info.preprocessing)[0]
        score = probabilities(backend.run(("logits",), x[None], np.array([klass]))["logits"], "softmax")[0, klass]
        random_rows.append(MetricRow(klass, float(score), x, random.uniform(0, 1, (SIZE, SIZE)).astype(np.float32)))
    random_scores = metrics.score(Evaluation({"average_drop": {}}), random_rows, Scoring(passes), runs_model=True)
    random_drop = np.mean([r["average_drop"] for r in random_scores])
    print(f"pointing game: Grad-CAM {pointing:.1f}%, centre {centre:.1f}%; average drop: Grad-CAM "
          f"{gradcam_drop:.1f}%, random map {random_drop:.1f}%\n{printed}")
    assert pointing >= 90 and pointing > centre
    assert gradcam_drop < random_drop


@pytest.mark.parametrize(("view", "least"), [("keep", 85), ("crop", 75)])
def test_patch_scores_point_at_the_object(trained, scenes, view, least, tmp_path):
    """Each 16x16 instance (stride 8) classified alone: the most confident instances are those on the square.
    Cropped and enlarged 4x (`view: crop`), the square is far larger than any this network was trained on, and
    the pointing game falls to 82.5% (keep: 95%): crop is for models trained on tiles. The network trained here
    differs with the CPU's float kernels: keep scored 95% on an Intel CPU and 87.5% (35 of 40) on an AMD EPYC
    without AVX512, so the bound is what both pass, above the centre's baseline."""
    _, model = trained
    images, boxes, _ = scenes
    evaluate = {"metrics": ["pointing_game"], "boxes": str(images.parent / "boxes.csv")}
    manifest = write_manifest(tmp_path, model, images, methods=[{"patches": {"patch": 16, "stride": 8, "view": view}}],
                              targets={"labels": str(images.parent / "labels.csv")}, evaluate=evaluate)
    assert main(["run", str(manifest), "--quiet"]) == 0
    rows = read_index(tmp_path / "out")
    assert len(rows) == 40 and {row["method"] for row in rows} == {"patches"}
    pointing = np.mean([float(row["pointing_game"]) for row in rows])
    print(f"patches ({view}): pointing game {pointing:.1f}%")
    assert pointing >= least and pointing > centre_hits(boxes), (view, pointing)


def test_fixations_point_at_the_object(trained, scenes, tmp_path):
    """One forward pass, no gradients: the densest fixations of the trained network lie on the square."""
    _, model = trained
    images, boxes, _ = scenes
    evaluate = {"metrics": ["pointing_game"], "boxes": str(images.parent / "boxes.csv")}
    manifest = write_manifest(tmp_path, model, images, methods=[{"fixations": {"sigma": 2}}],
                              targets={"labels": str(images.parent / "labels.csv")}, evaluate=evaluate)
    assert main(["run", str(manifest), "--quiet"]) == 0
    rows = read_index(tmp_path / "out")
    pointing = np.mean([float(row["pointing_game"]) for row in rows])
    print(f"fixations: pointing game {pointing:.1f}%")
    assert pointing >= 90 and pointing > centre_hits(boxes), pointing
