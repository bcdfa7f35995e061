"""`onnxcam run` with an evaluate section: metric columns, summary.csv, the printed table, curves, costs, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.evaluate.metrics import POINTING_TOLERANCE
from runner_helpers import FlakyBackend, read_index, write_images, write_manifest

METHODS = ["gradcam", "scorecam", "occlusion", "saliency", "smoothgrad", "guided_backprop"]
METRICS = ["average_drop", "increase_in_confidence", "top_removal", "deletion", "insertion", "pointing_game"]
STEPS = 5


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net", saliency=True)[1].path


def _manifest(tmp_path: Path, toy: Path, **evaluate) -> Path:
    """All metrics by default (with boxes); `evaluate` replaces any of the section's keys."""
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1,class\nimg00000.png,0,0,30,20\nimg00001.png,40,10,80,50,2\n"
                     "img00001.png,0,0,5,5,4\n")
    section = {"boxes": str(boxes), "deletion": {"steps": STEPS}, "insertion": {"steps": STEPS, "baseline": "mean"}}
    section = {key: value for key, value in (section | evaluate).items() if value is not None}
    return write_manifest(tmp_path, toy, tmp_path / "images", methods=METHODS,
                          occlusion={"patch": 112, "stride": 56}, smoothgrad={"samples": 3}, evaluate=section,
                          targets={"topk": 2})


def _run(capsys, manifest: Path) -> tuple[int, str]:
    code = main(["run", str(manifest), "--quiet"])
    return code, capsys.readouterr().out


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as file:
        return {row["method"]: row for row in csv.DictReader(file)}


def test_metrics_summary_curves_and_costs(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 3, size=(60, 90))
    code, printed = _run(capsys, _manifest(tmp_path, toy))
    assert code == 0, printed
    out = tmp_path / "out"
    rows = read_index(out)
    assert len(rows) == 3 * 2 * len(METHODS)
    for row in rows:
        score = float(row["target_score"])
        for metric in METRICS[:-1]:
            assert row[metric] != "", f"{row['method']}: {metric} missing"
        assert 0 <= float(row["average_drop"]) <= 100 and row["increase_in_confidence"] in ("0", "100")
        deletion = np.array(row["deletion_curve"].split(), float)
        insertion = np.array(row["insertion_curve"].split(), float)
        assert len(deletion) == len(insertion) == STEPS + 1
        assert deletion[0] == pytest.approx(score, rel=1e-3) and insertion[-1] == pytest.approx(score, rel=1e-3)
        auc = (deletion.sum() - deletion[0] / 2 - deletion[-1] / 2) / STEPS
        assert float(row["deletion"]) == pytest.approx(auc, rel=1e-3)
        # pointing game: img00000 has a box for every class, img00001 boxes for classes 2 and 4, img00002 none
        x, y, target = int(row["peak_x"]), int(row["peak_y"]), int(row["target_class"])
        boxes = {"img00000.png": [(0, 0, 30, 20, None)], "img00001.png": [(40, 10, 80, 50, 2), (0, 0, 5, 5, 4)]}
        relevant = [b for b in boxes.get(row["image"], []) if b[4] in (None, target)]
        if not relevant:
            assert row["pointing_game"] == ""
        else:
            t = POINTING_TOLERANCE
            hit = any(x0 - t <= x <= x1 + t and y0 - t <= y <= y1 + t for x0, y0, x1, y1, _ in relevant)
            assert row["pointing_game"] == ("100" if hit else "0")

    summary = _summary(out)
    assert list(summary) == METHODS
    for method in METHODS:
        mine = [row for row in rows if row["method"] == method]
        for metric in METRICS:
            values = [float(row[metric]) for row in mine if row[metric] != ""]
            assert int(summary[method][f"{metric}_count"]) == len(values)
            if values:
                assert float(summary[method][f"{metric}_mean"]) == pytest.approx(np.mean(values), rel=1e-4, abs=1e-6)
                std = np.std(values, ddof=1) if len(values) > 1 else 0.0
                assert float(summary[method][f"{metric}_std"]) == pytest.approx(std, rel=1e-3, abs=1e-6)
    assert int(summary["gradcam"]["pointing_game_count"]) >= 2  # img00000's box counts for both its targets

    table = printed[printed.index("faithfulness"):].splitlines()
    assert table[1].split() == ["method", *METRICS]
    assert [line.split()[0] for line in table[2:]] == METHODS

    for name in ["deletion", "insertion", *METHODS]:
        picture = cv2.imread(str(out / "curves" / f"{name}.png"))
        assert picture is not None and picture.shape == (460, 960, 3)
        assert (picture != 255).any(axis=2).mean() > 0.01, f"{name}.png is blank"

    report = json.loads((out / "run.json").read_text())
    methods, metrics = report["cost"]["methods"], report["cost"]["metrics"]
    assert all(methods[m]["rows"] == 6 for m in METHODS)
    assert methods["occlusion"]["passes_per_row"] == 9  # 3 x 3 windows of 112 every 56 on 224
    assert methods["scorecam"]["passes_per_row"] == 16  # one per channel
    assert methods["smoothgrad"]["passes_per_row"] == 3
    assert methods["gradcam"]["passes_per_row"] == 0 and methods["gradcam"]["ms_per_row"] >= 0
    assert metrics["deletion"]["passes_per_row"] == STEPS and metrics["insertion"]["passes_per_row"] == STEPS
    assert metrics["top_removal"]["passes_per_row"] == 1
    assert metrics["average_drop"]["passes_per_row"] + metrics["increase_in_confidence"]["passes_per_row"] == 1
    assert "pointing_game" not in metrics  # no model passes
    assert report["evaluate"]["metrics"]["deletion"] == {"steps": STEPS, "baseline": "mean"}


def test_resumed_run_summarises_every_row_and_refuses_other_settings(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 2, size=(40, 40))
    manifest = _manifest(tmp_path, toy, metrics=["average_drop", "deletion"], insertion=None)
    assert _run(capsys, manifest)[0] == 0
    first = read_index(tmp_path / "out")
    write_images(tmp_path / "more", 3, size=(40, 40))
    (tmp_path / "more" / "img00002.png").rename(tmp_path / "images" / "img00002.png")
    assert _run(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    assert rows[:len(first)] == first and len(rows) == 3 * 2 * len(METHODS)
    assert all(int(row["deletion_count"]) == 6 for row in _summary(tmp_path / "out").values())
    assert "pointing_game_count" not in _summary(tmp_path / "out")["gradcam"]

    changed = _manifest(tmp_path, toy, metrics=["average_drop", "deletion"], insertion=None, batch_size=8)
    assert _run(capsys, changed)[0] == 0, "evaluate.batch_size changes speed, not figures"
    changed = _manifest(tmp_path, toy, metrics=["average_drop", "insertion"], deletion=None)
    code, printed = _run(capsys, changed)
    assert code == 2 and "holds a run with other evaluate settings" in printed


def test_a_failed_extra_pass_becomes_error_rows(toy, tmp_path):
    from onnxcam.runner.manifest import load_manifest
    from onnxcam.runner.model.backend import OnnxRuntimeBackend
    from onnxcam.runner.run import Run

    write_images(tmp_path / "images", 6, size=(40, 40))
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=["gradcam", "occlusion"],
                              occlusion={"patch": 112, "stride": 112}, evaluate={"metrics": ["deletion"]},
                              runtime={"providers": ["cpu"], "batch_size": 2, "workers": 2})
    backend = FlakyBackend(OnnxRuntimeBackend(toy, ["cpu"]), 3, "out of memory", outputs=("logits",))
    tally = Run(load_manifest(manifest), quiet=True, backend=backend).run()
    rows = read_index(tmp_path / "out")
    errors = {row["image"] for row in rows if row["status"] == "error"}
    assert len(errors) == 2 and tally.errors == 2 and tally.images == 6
    assert {row["error"] for row in rows if row["status"] == "error"} == {
        "a method or metric failed on this batch (out of memory)"}
    assert all(row["deletion"] for row in rows if row["status"] == "ok") and len(rows) == 2 + 4 * 2


def test_resuming_with_other_method_options_is_refused(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 1, size=(40, 40))
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=["gradcam", "occlusion"],
                              occlusion={"patch": 112, "stride": 112})
    assert _run(capsys, manifest)[0] == 0
    more = write_manifest(tmp_path, toy, tmp_path / "images", methods=["gradcam", "occlusion", "saliency"],
                          occlusion={"patch": 112, "stride": 112})
    assert _run(capsys, more)[0] == 0, "adding a method is allowed"
    changed = write_manifest(tmp_path, toy, tmp_path / "images", methods=["occlusion"],
                             occlusion={"patch": 112, "stride": 56})
    code, printed = _run(capsys, changed)
    assert code == 2 and "holds a run with other occlusion options" in printed
