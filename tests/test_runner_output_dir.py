"""output.dir: one run at a time (the lock), a dead run's lock blocks nothing, resume streams and cuts out what is
not complete or not first, temporary names never collide, and every mistake about the folder is one line."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.manifest import load_manifest
from onnxcam.runner.outputs.files import OutputDirError, temporary_name, write_atomic
from onnxcam.runner.outputs.index import COLUMNS, IndexFile
from onnxcam.runner.outputs.lock import LOCK_NAME, RunLock
from onnxcam.runner.run import Run
from runner_helpers import read_index, write_images, write_manifest


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net")[1].path


def run_cli(capsys, manifest: Path) -> tuple[int, list[str]]:
    code = main(["run", str(manifest), "--quiet"])
    return code, capsys.readouterr().out.strip().splitlines()


def keys(out: Path) -> collections.Counter:
    return collections.Counter((row["image"], row["target_class"], row["method"]) for row in read_index(out))


# Another process that holds output.dir's lock as a run does, until its stdin closes (or it is killed).
HOLD = ("import sys; from pathlib import Path; from onnxcam.runner.outputs.lock import RunLock\n"
        "with RunLock(Path(sys.argv[1])):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()")


def hold_lock(folder: Path) -> subprocess.Popen:
    """A process holding `folder`'s lock once this returns."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n", holder.communicate()
    return holder


def test_a_second_run_on_the_same_folder_exits_2_naming_the_holder(toy, tmp_path):
    write_images(tmp_path / "images", 3)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=["gradcam", "hirescam"])
    first = hold_lock(tmp_path / "out")
    try:
        second = subprocess.run([sys.executable, "-m", "onnxcam.runner.cli", "run", str(manifest)],
                                capture_output=True, text=True, timeout=120)
    finally:
        first.communicate("")  # closes its stdin: it lets go
    lines = second.stdout.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stdout + second.stderr
    assert f"is in use by pid {first.pid} on " in lines[0] and "running since 20" in lines[0], lines[0]
    assert "wait for that run to end, or pick another output.dir" in lines[0]
    assert not (tmp_path / "out" / "index.csv").exists(), "the second run wrote nothing"
    assert (tmp_path / "out" / LOCK_NAME).read_text() == "", "the lock file is left empty"
    code = main(["run", str(manifest), "--quiet"])
    assert code == 0 and len(keys(tmp_path / "out")) == 3 * 2, "free again once its holder lets go"


def test_the_lock_of_a_killed_run_blocks_nothing(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 3)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images")
    holder = hold_lock(tmp_path / "out")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    note = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
    assert note["pid"] == holder.pid, "the dead run's note is still there"
    code, lines = run_cli(capsys, manifest)
    assert code == 0 and lines[-1].startswith("onnxcam run: done: 3 images"), lines
    assert (tmp_path / "out" / LOCK_NAME).read_text() == ""


def test_a_lock_note_from_a_lost_node_blocks_nothing(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps({"host": "node-17", "pid": 4242, "since": "yesterday"}))
    code, lines = run_cli(capsys, write_manifest(tmp_path, toy, tmp_path / "images"))
    assert code == 0 and lines[-1].startswith("onnxcam run: done: 2 images"), lines


def test_a_run_in_the_same_process_is_refused_too(toy, tmp_path):
    write_images(tmp_path / "images", 2)
    manifest = load_manifest(write_manifest(tmp_path, toy, tmp_path / "images"))
    (tmp_path / "out").mkdir()
    with RunLock(tmp_path / "out"), pytest.raises(OutputDirError, match="is in use by pid"):
        Run(manifest, quiet=True).run()
    assert Run(manifest, quiet=True).run().images == 2, "released when the holder ends"


def test_output_dir_mistakes_are_one_line(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 2)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images")
    out = tmp_path / "out"
    out.write_text("a file, not a folder")
    code, lines = run_cli(capsys, manifest)
    assert code == 2 and lines == [f"onnxcam run: error: output.dir: {out} is a file, not a folder; pick another "
                                   "output.dir"]
    out.unlink()
    out.mkdir()
    cases = [
        (b"name,size\na.jpg,3\n", "is not an onnxcam index of this version (columns differ); move it away"),
        (",".join(COLUMNS).encode() + b"\r\n\xff\xfe,ok\r\n", "is not an onnxcam index (not UTF-8 text)"),
        (",".join(COLUMNS).encode() + b"\r\na.jpg,ok\r\n",
         f"is not an onnxcam index (a row has 2 fields, not {len(COLUMNS)})"),
    ]
    for content, message in cases:
        (out / "index.csv").write_bytes(content)
        code, lines = run_cli(capsys, manifest)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("onnxcam run: error: output.dir: "), lines
        assert message in lines[0]
        assert (out / "index.csv").read_bytes() == content, "a foreign index is left as it was"
    (out / "index.csv").write_text(",".join(COLUMNS) + "\r\n")
    for damaged in ("{not json", '{"methods": 5}', '["a", "list"]'):
        (out / ".onnxcam-run.json").write_text(damaged)
        code, lines = run_cli(capsys, manifest)
        assert code == 2 and len(lines) == 1 and "onnxcam-run.json is damaged; delete the folder" in lines[0], lines


def test_temporary_files_of_a_killed_run_are_cleared_and_a_torn_header_is_rewritten(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 2)
    out = tmp_path / "out"
    (out / ".onnxcam-partial").mkdir(parents=True)
    (out / ".index.csv.0123abcd.partial").write_bytes(b"half of a rewrite")
    (out / ".onnxcam-partial" / ".a.png.gradcam.3.jpg.4567cdef.partial").write_bytes(b"half an overlay")
    (out / "index.csv").write_bytes(b"image,status,err")
    code, lines = run_cli(capsys, write_manifest(tmp_path, toy, tmp_path / "images"))
    assert code == 0 and lines[-1].startswith("onnxcam run: done: 2 images"), lines
    assert not list(out.rglob(".*.partial")) and len(read_index(out)) == 2
    assert not (out / ".onnxcam-partial").exists(), "heatmaps and overlays are written through a scratch folder"


def _row(image: str, target: str, method: str, status: str = "ok") -> dict[str, str]:
    return {"image": image, "status": status, "target_class": target, "method": method}


def test_resume_keeps_the_first_complete_copy_of_each_image(tmp_path):
    """A folder written twice at once by runs before the lock existed has every image's rows twice; a torn line
    and an incomplete image sit among them. Resume keeps each complete image once, byte for byte."""
    path = tmp_path / "index.csv"
    index = IndexFile(path, ["gradcam", "layercam"])
    complete = [[_row(f"{name}.jpg", "3", "gradcam"), _row(f"{name}.jpg", "3", "layercam")] for name in "abc"]
    for rows in [complete[0], complete[1], complete[0], [_row("d.jpg", "1", "gradcam")], complete[2], complete[1],
                 [_row("e.jpg", "", "", status="error")], complete[2]]:
        index.append(rows)
    index.close()
    with open(path, "ab") as file:
        file.write(b"f.jpg,ok,,1,1,")  # torn
    lines = path.read_bytes().splitlines(keepends=True)
    resumed = IndexFile(path, ["layercam", "gradcam"])
    resumed.close()
    assert resumed.done == {"a.jpg", "b.jpg", "c.jpg", "e.jpg"}
    assert path.read_bytes() == b"".join(lines[i] for i in (0, 1, 2, 3, 4, 8, 9, 12)), "first copies, as they were"
    again = IndexFile(path, ["gradcam", "layercam"])
    again.close()
    assert again.done == resumed.done and path.read_bytes() == b"".join(lines[i] for i in (0, 1, 2, 3, 4, 8, 9, 12))


def test_index_rows_are_written_in_column_order_and_an_unknown_key_is_refused(tmp_path):
    index = IndexFile(tmp_path / "index.csv", ["gradcam"])
    index.append([{"method": "gradcam", "image": "a, b.jpg", "status": "ok", "peak_x": 3}])
    with pytest.raises(ValueError, match="no column \\['pek_x'\\]"):
        index.append([{"image": "c.jpg", "status": "ok", "pek_x": 3}])
    index.close()
    assert (tmp_path / "index.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_index(tmp_path) == [{column: "" for column in COLUMNS} | {
        "image": "a, b.jpg", "status": "ok", "method": "gradcam", "peak_x": "3"}]


def test_temporary_names_are_unique_and_concurrent_writes_are_whole(tmp_path):
    target = tmp_path / "same.bin"
    assert len({temporary_name(target) for _ in range(1000)}) == 1000
    payloads = [bytes([k]) * 200_000 for k in range(16)]
    threads = [threading.Thread(target=write_atomic, args=(target, payload)) for payload in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["same.bin"], "no temporary file left behind"
