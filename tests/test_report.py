"""report.html's data: built at the end of every run and by `onnxcam report`, covering every row of index.csv,
with thumbnails written by the write stage, in chunks the page loads from disk."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.report import build
from report_helpers import read_chunks, read_head
from runner_helpers import read_index, write_images, write_manifest

METHODS = ["gradcam", "guided_backprop"]


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net")[1].path


def run(capsys, manifest: Path) -> tuple[int, str]:
    code = main(["run", str(manifest), "--quiet"])
    return code, capsys.readouterr().out


def entries_of(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(image, target) pairs in index order: one per target of an ok image, one per other image."""
    seen = []
    for row in rows:
        if (row["image"], row["target_class"]) not in seen:
            seen.append((row["image"], row["target_class"]))
    return seen


def test_every_run_writes_a_report_of_its_rows_with_thumbnails(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 4, size=(300, 200))
    (tmp_path / "images" / "broken.png").write_bytes(b"not a picture")
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=METHODS, targets={"topk": 2})
    code, printed = run(capsys, manifest)
    out = tmp_path / "out"
    assert code == 0 and f"report {out / 'report.html'}" in printed, printed
    rows = read_index(out)
    head, chunks = read_head(out), read_chunks(out)
    assert head["counts"] == {"images": 5, "ok": 4, "errors": 1, "no_target": 0, "rows": 4 * 2 * 2 + 1,
                              "entries": 4 * 2 + 1}
    assert head["methods"] == METHODS and head["metrics"] == [] and head["chunks"] == len(chunks) == 1
    assert head["photoBase"] == "../images/" and head["thumbs"] == "thumbs" and head["overlayExt"] == "jpg"
    assert head["errors"] == [["broken.png", next(r["error"] for r in rows if r["status"] == "error")]]
    assert head["run"]["targets"] == "top-2" and head["run"]["methods"] == METHODS
    chunk = chunks[0]
    pairs = entries_of(rows)
    assert list(zip(chunk["img"], [str(c) if c is not None else "" for c in chunk["tc"]], strict=True)) == pairs
    assert chunk["st"].count(1) == 1 and list(chunk["err"]) == [str(chunk["img"].index("broken.png"))]
    by_pair = {(row["image"], row["target_class"]): row for row in rows}
    for k, (image, target) in enumerate(pairs):
        row = by_pair[(image, target)]
        assert chunk["ps"][k] == (float(row["pred_score"]) if row["pred_score"] else None)
        assert chunk["wh"][2 * k:2 * k + 2] == [int(row["width"] or 0), int(row["height"] or 0)]
        assert [head["methods"][m] for m in chunk["ms"][k]] == ([] if row["status"] == "error" else METHODS)

    for row in rows:
        if row["status"] != "ok":
            continue
        thumbnail = cv2.imread(str(out / "thumbs" / f"{row['image']}.{row['method']}.{row['target_class']}.jpg"))
        photo = cv2.imread(str(out / "thumbs" / f"{row['image']}.photo.jpg"))
        assert thumbnail.shape == photo.shape == (256, 171, 3), "the longer side is 256 px, the aspect kept"
        if row["method"] == "gradcam":  # a colormapped heat over the photograph, like the overlay at 256 px
            overlay = cv2.resize(cv2.imread(str(out / row["overlay_path"])), (171, 256), interpolation=cv2.INTER_AREA)
            assert abs(cv2.absdiff(overlay, thumbnail).astype(float).mean()) < 12
    page = (out / "report.html").read_text(encoding="utf-8")
    for remote in ('src="http', "src='http", "<link", "@import", "url(http", "fetch("):
        assert remote not in page, f"the page must open offline: {remote}"


def test_a_resumed_run_reports_every_row_and_the_last_run(toy, tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images, 3)
    manifest = write_manifest(tmp_path, toy, images, methods=METHODS)
    assert run(capsys, manifest)[0] == 0
    for k in (7, 8):
        cv2.imwrite(str(images / f"late{k}.png"), cv2.imread(str(images / "img00000.png")))
    assert run(capsys, manifest)[0] == 0
    out = tmp_path / "out"
    head = read_head(out)
    assert head["counts"]["images"] == 5 and head["counts"]["rows"] == len(read_index(out)) == 5 * 2
    assert (head["run"]["images"], head["run"]["already_done"]) == (2, 3), "the header says what the last run did"
    assert sorted(read_chunks(out)[0]["img"]) == sorted(row["image"] for row in read_index(out)[::2])


def test_chunks_hold_every_entry_once_and_a_rebuild_drops_stale_ones(toy, tmp_path, capsys, monkeypatch):
    write_images(tmp_path / "images", 7)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=["gradcam"], targets={"topk": 2})
    monkeypatch.setattr(build, "CHUNK", 3)
    assert run(capsys, manifest)[0] == 0
    out = tmp_path / "out"
    chunks = read_chunks(out)
    assert [chunk["n"] for chunk in chunks] == [3, 3, 3, 3, 2] and read_head(out)["chunkSize"] == 3
    assert [(image, str(target)) for chunk in chunks for image, target in zip(chunk["img"], chunk["tc"], strict=True)] \
        == entries_of(read_index(out))

    monkeypatch.setattr(build, "CHUNK", 5)
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"onnxcam report: 7 images (0 errors), 14 gallery entries, 14 rows -> {out}/report.html")
    assert sorted(path.name for path in (out / "report").iterdir()) == ["items-00000.js", "items-00001.js",
                                                                         "items-00002.js"]


def test_evaluate_figures_and_curves_reach_the_report(exported, tmp_path, capsys):
    toy = exported("toy_models:relu_net", saliency=True)[1].path
    write_images(tmp_path / "images", 3, size=(60, 90))
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=["gradcam", "saliency"],
                              evaluate={"metrics": ["average_drop", "deletion", "insertion"],
                                        "deletion": {"steps": 4}, "insertion": {"steps": 4}})
    assert run(capsys, manifest)[0] == 0
    out = tmp_path / "out"
    head, rows = read_head(out), read_index(out)
    assert head["metrics"] == ["average_drop", "deletion", "insertion"] and head["curves"] == ["deletion", "insertion"]
    assert head["higherIsBetter"] == {"average_drop": False, "deletion": False, "insertion": True}
    with open(out / "summary.csv", encoding="utf-8") as file:
        summary = {line.split(",")[0]: line.strip().split(",") for line in file.readlines()[1:]}
    for method in ("gradcam", "saliency"):
        mean, std, count = head["summary"][method]["deletion"]
        assert f"{mean:.6g}" == summary[method][4] and count == 3
        assert len(head["meanCurves"]["deletion"][method]) == 5
    chunk, curves = read_chunks(out)[0], read_chunks(out, "curves")[0]
    for k, image in enumerate(chunk["img"]):
        mine = {row["method"]: row for row in rows if row["image"] == image}
        methods = [head["methods"][m] for m in chunk["ms"][k]]
        assert chunk["m"]["deletion"][k] == [float(mine[m]["deletion"]) for m in methods]
        assert curves["deletion"][k] == [mine[m]["deletion_curve"] for m in methods]
    assert head["curveChunks"] == [0]


def test_thumbnail_settings(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 2, size=(90, 60))
    for name, thumbnails, expected in (("small", 64, (43, 64)), ("none", False, None)):
        folder = tmp_path / name
        folder.mkdir()
        manifest = write_manifest(folder, toy, tmp_path / "images", methods=["gradcam"],
                                  output={"dir": str(folder / "out"), "overlays": False, "thumbnails": thumbnails})
        assert run(capsys, manifest)[0] == 0
        thumbs = sorted((folder / "out").rglob("*.jpg"))
        if expected is None:
            assert not thumbs and read_head(folder / "out")["thumbs"] == ""
        else:
            assert len(thumbs) == 2 * 2, "with overlays off, thumbnails are still drawn (for the report)"
            assert {cv2.imread(str(path)).shape[1::-1] for path in thumbs} == {expected}


@pytest.mark.parametrize("value,message", [
    (16, "output.thumbnails: expected an integer between 32 and 1024, got 16"),
    ("big", "output.thumbnails: expected a number of pixels or false, got a string 'big'"),
])
def test_thumbnail_mistakes_are_one_line(toy, tmp_path, capsys, value, message):
    write_images(tmp_path / "images", 1)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images",
                              output={"dir": str(tmp_path / "out"), "thumbnails": value})
    code, printed = run(capsys, manifest)
    assert code == 2 and printed.strip() == f"onnxcam run: error: {manifest}: {message}"


def test_report_command_mistakes(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().out.strip() == (f"onnxcam report: error: {tmp_path / 'nowhere'}: no such folder; give "
                                               "the output.dir of a run")
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().out.strip() == (f"onnxcam report: error: {tmp_path}: no index.csv, so not an onnxcam "
                                               "output.dir; give the folder a run wrote")
    (tmp_path / "index.csv").write_text("a,b\n1,2\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "columns differ" in capsys.readouterr().out


def test_error_reasons_are_counted_the_most_frequent_first(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    (tmp_path / "images" / "a.png").write_bytes(b"not a png")  # the rarer reason comes first
    for name in ("b1.png", "b2.png", "b3.png"):
        (tmp_path / "images" / name).write_bytes(b"")
    code, printed = run(capsys, write_manifest(tmp_path, toy, tmp_path / "images"))
    assert code == 0, printed
    assert read_head(tmp_path / "out")["reasons"] == [
        ["empty file (0 bytes)", 3],
        ["not a decodable image (corrupt, truncated or not an image format OpenCV reads)", 1]]
