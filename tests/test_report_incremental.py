"""A run's report continues the last build (.onnxcam-report.json) and reads only the rows appended since: its
files are those a build of every row writes, and it falls back to such a build when the state or index.csv
says it cannot continue. The comparisons are file by file, byte for byte; report.html's build time is the one
difference, cut out before comparing."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.outputs.files import write_atomic
from onnxcam.runner.outputs.index import COLUMNS
from onnxcam.runner.outputs.stamp import STAMP_NAME
from onnxcam.runner.report import build
from onnxcam.runner.report.build import DATA_DIR, REPORT_NAME, STATE_NAME, write_report
from report_helpers import read_chunks, read_head
from runner_helpers import read_index, write_images, write_manifest

METHODS = ("gradcam", "layercam")
REASONS = ("empty file", "not an image:\nline two", 'a "quoted" reason')


def image_rows(k: int) -> list[list[str]]:
    """One image's rows as a run writes them: an error, no target, or two methods for one or two targets, with
    figures and curves on some."""
    key = f"photos/{k:04d}.jpg"
    if k % 7 == 3:
        return [[key, "error", REASONS[k % 3], *[""] * (len(COLUMNS) - 3)]]
    row = dict.fromkeys(COLUMNS, "") | {"image": key, "width": str(40 + k), "height": "30", "pred_class": str(k % 5),
                                        "pred_label": f"class {k % 5}", "pred_score": f"0.{k:03d}"}
    if k % 7 == 5:
        return [list((row | {"status": "no_target"}).values())]
    rows = []
    for target in sorted({k % 5, (k + 2) % 5} if k % 2 else {k % 5}):
        for m, method in enumerate(METHODS):
            values = {"status": "ok", "target_class": str(target), "target_label": f"class {target}",
                      "target_score": f"0.{k + m:03d}", "method": method, "overlay_path": f"{key}.{method}.jpg"}
            if k % 3:
                values |= {"average_drop": str(k * 0.37 % 1), "deletion": str((k + m) * 0.13 % 1),
                           "deletion_curve": " ".join(str((k + m + s) * 0.07 % 1) for s in range(5))}
            rows.append(list((row | values).values()))
    return rows


def csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode("utf-8")


def index_rows(images: range) -> list[list[str]]:
    return [row for k in images for row in image_rows(k)]


def write_folder(root: Path, rows: list[list[str]]) -> Path:
    """root/demo/out with an index.csv of `rows` and a stamp (the page's title names the last two folders)."""
    out = root / "demo" / "out"
    out.mkdir(parents=True)
    (out / "index.csv").write_bytes(csv_bytes([list(COLUMNS), *rows]))
    (out / STAMP_NAME).write_text(json.dumps({"methods": json.dumps(list(METHODS))}), encoding="utf-8")
    return out


def append(out: Path, data: bytes) -> None:
    with open(out / "index.csv", "ab") as file:
        file.write(data)


def files(out: Path) -> dict[str, bytes]:
    """The report's files: the page without its build time, every chunk, and the state without the file's id."""
    found = {path.name: path.read_bytes() for path in sorted((out / DATA_DIR).iterdir())}
    found[REPORT_NAME] = re.sub(rb'"built":"[^"]*"', b"", (out / REPORT_NAME).read_bytes())
    if (out / STATE_NAME).exists():
        state = json.loads((out / STATE_NAME).read_text(encoding="utf-8"))
        del state["index"]["file"]
        found[STATE_NAME] = json.dumps(state).encode()
    return found


def full_build(tmp_path: Path, rows: list[list[str]]) -> dict[str, bytes]:
    out = write_folder(tmp_path / "full", rows)
    write_report(out)
    return files(out)


def first_chunk_id(out: Path) -> int:
    """items-00000.js's inode: the same after a build that continued, a new one after a build of every row (every
    file is written to a temporary name, then renamed)."""
    return (out / DATA_DIR / "items-00000.js").stat().st_ino


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(build, "CHUNK", 4)
    monkeypatch.setattr(build, "MAX_ERRORS", 3)
    monkeypatch.setattr(build, "MAX_REASONS", 2)


@pytest.mark.parametrize("first,rows,last", [(40, 0, 60), (40, 0, 40), (13, 1, 60), (13, 2, 60), (1, 1, 60),
                                             (0, 0, 60)],
                         ids=["images", "nothing-new", "inside-an-entry", "between-targets", "first-chunk", "empty"])
def test_a_continued_build_writes_the_files_a_full_build_writes(tmp_path, first, rows, last):
    """`first` images and `rows` of the next one's (as a run still writing leaves them: image 13 has two targets),
    then the rest up to `last` appended."""
    every = index_rows(range(last))
    done = index_rows(range(first)) + image_rows(first)[:rows]
    out = write_folder(tmp_path / "out", done)
    write_report(out)
    chunk = first_chunk_id(out) if len(read_chunks(out)) > 1 else None
    append(out, csv_bytes(every[len(done):]))
    counts = write_report(out, incremental=True)
    assert files(out) == full_build(tmp_path, every)
    if chunk is not None:
        assert first_chunk_id(out) == chunk, "a full chunk it had written stays as it was"
    head = read_head(out)
    errors = sum(k % 7 == 3 for k in range(last))
    assert counts.rows == head["counts"]["rows"] == len(every) and head["counts"]["errors"] == errors >= 6
    assert len(head["errors"]) == 3 and len(head["reasons"]) == 3, "the capped lists as a full build caps them"
    assert set(head["summary"]) == set(METHODS) and head["curves"] == ["deletion"]


def test_several_continued_builds_in_a_row(tmp_path):
    every = index_rows(range(50))
    out = write_folder(tmp_path / "out", [])
    write_report(out)
    chunk, written = None, 0
    for images in (range(0, 9), range(9, 10), range(10, 31), range(31, 50)):
        rows = index_rows(images)
        append(out, csv_bytes(rows))
        written += len(rows)
        write_report(out, incremental=True)
        chunk = chunk or first_chunk_id(out)
    assert written == len(every) and first_chunk_id(out) == chunk
    assert files(out) == full_build(tmp_path, every)


def test_a_torn_last_line_is_shown_as_a_full_build_shows_it_and_read_again_once_whole(tmp_path):
    every = index_rows(range(30))
    whole = csv_bytes(every)
    line = whole.rindex(b"\r\n", 0, len(whole) - 2) + 2  # where the last row starts
    out = write_folder(tmp_path / "out", [])
    append(out, whole[:line + 20])
    write_report(out)
    assert files(out) == full_build(tmp_path, every[:-1])
    assert json.loads((out / STATE_NAME).read_text())["index"]["end"] == (out / "index.csv").stat().st_size - 20
    append(out, whole[line + 20:])
    chunk = first_chunk_id(out)
    write_report(out, incremental=True)
    assert files(out) == full_build(tmp_path / "again", every) and first_chunk_id(out) == chunk


def test_no_state_when_the_last_line_break_is_inside_a_field(tmp_path):
    """A torn error row whose reason holds a line break: the rows up to its break are no place to continue from."""
    out = write_folder(tmp_path / "out", index_rows(range(10)))
    data = csv_bytes(image_rows(10))
    assert data.count(b"\n") == 2, "image 10's error row holds a line break"
    append(out, data[:data.index(b"\n") + 1])
    (out / STATE_NAME).write_text("{}")
    write_report(out)
    assert not (out / STATE_NAME).exists()
    append(out, data[data.index(b"\n") + 1:] + csv_bytes(index_rows(range(11, 20))))
    write_report(out, incremental=True)
    assert files(out) == full_build(tmp_path, index_rows(range(20)))


def rewrite_index(out: Path) -> None:
    """The same bytes in a new file, as a resume that cut rows writes it."""
    write_atomic(out / "index.csv", (out / "index.csv").read_bytes())


def cut_a_row(out: Path) -> None:
    rows = read_index(out)
    del rows[7]
    write_atomic(out / "index.csv", csv_bytes([list(COLUMNS), *([row[c] for c in COLUMNS] for row in rows)]))


def overwrite_in_place(out: Path) -> None:
    """The covered bytes changed in the same file, length kept: the image key of its last row."""
    with open(out / "index.csv", "r+b") as file:
        data = file.read()
        start = data.rindex(b"\r\n", 0, len(data) - 2) + 2
        file.seek(start)
        file.write(b"X")


def truncate(out: Path) -> None:
    with open(out / "index.csv", "r+b") as file:
        file.truncate(file.seek(0, 2) - 100)


FALLBACKS = {
    "no state": lambda out: (out / STATE_NAME).unlink(),
    "not json": lambda out: (out / STATE_NAME).write_bytes(b"\x00garbage"),
    "a list": lambda out: (out / STATE_NAME).write_text("[1, 2]"),
    "another version": lambda out: (out / STATE_NAME).write_text(
        (out / STATE_NAME).read_text().replace('"version":1,', '"version":0,')),
    "a field gone": lambda out: (out / STATE_NAME).write_text(
        (out / STATE_NAME).read_text().replace('"curve_chunks"', '"chunks_with_curves"')),
    "index rewritten": rewrite_index,
    "index with a row cut": cut_a_row,
    "index changed in place": overwrite_in_place,
    "index shorter": truncate,
    "another stamp": lambda out: (out / STAMP_NAME).write_text(json.dumps({"methods": '["gradcam"]'})),
    "a chunk gone": lambda out: (out / DATA_DIR / "items-00001.js").unlink(),
}


@pytest.mark.parametrize("change", FALLBACKS.values(), ids=FALLBACKS.keys())
def test_a_build_that_cannot_continue_reads_every_row(tmp_path, change):
    out = write_folder(tmp_path / "out", index_rows(range(30)))
    write_report(out)
    change(out)
    chunk = first_chunk_id(out)
    append(out, csv_bytes(index_rows(range(30, 45))))
    write_report(out, incremental=True)
    assert first_chunk_id(out) != chunk, "every chunk written again"
    full = write_folder(tmp_path / "full", [])
    shutil.copyfile(out / "index.csv", full / "index.csv")
    shutil.copyfile(out / STAMP_NAME, full / STAMP_NAME)
    write_report(full)
    assert files(out) == files(full)


def test_other_limits_read_every_row(tmp_path, monkeypatch):
    out = write_folder(tmp_path / "out", index_rows(range(30)))
    write_report(out)
    monkeypatch.setattr(build, "CHUNK", 5)
    chunk = first_chunk_id(out)
    append(out, csv_bytes(index_rows(range(30, 45))))
    write_report(out, incremental=True)
    assert first_chunk_id(out) != chunk and files(out) == full_build(tmp_path, index_rows(range(45)))


def test_a_resume_continues_the_report_and_onnxcam_report_rebuilds_it(exported, tmp_path, capsys):
    toy = exported("toy_models:relu_net")[1].path
    images = tmp_path / "images"
    write_images(images, 9)
    manifest = write_manifest(tmp_path, toy, images, methods=["gradcam"])
    assert main(["run", str(manifest), "--quiet"]) == 0
    out = tmp_path / "out"
    chunk = first_chunk_id(out)
    write_images(tmp_path / "late", 2)
    for k, path in enumerate(sorted((tmp_path / "late").iterdir())):
        path.rename(images / f"late{k}.png")
    assert main(["run", str(manifest), "--quiet"]) == 0
    assert first_chunk_id(out) == chunk and read_head(out)["counts"]["images"] == 11
    resumed = files(out)
    assert main(["report", str(out)]) == 0
    assert first_chunk_id(out) != chunk, "onnxcam report builds from every row"
    capsys.readouterr()
    assert files(out) == resumed
