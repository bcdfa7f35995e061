"""Interrupted runs (Ctrl-C, kill -9, a torn index line) resume: finished rows are kept, none duplicated.
Peak memory does not grow with the number of images."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from runner_helpers import Gate, read_index, smooth_image, start_run, wait_for_rows, write_images, write_manifest

IMAGES, TARGETS, METHODS = 400, 2, ("gradcam", "hirescam")
GATE = 60  # the image a FIFO stands in for while a run is stopped: the images listed before it are nearly all done


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net")[1].path


def assert_complete(out: Path) -> None:
    rows = read_index(out)
    keys = collections.Counter((row["image"], row["target_class"], row["method"]) for row in rows)
    assert max(keys.values()) == 1, "no (image, target, method) twice"
    assert len({row["image"] for row in rows}) == IMAGES
    assert len(rows) == IMAGES * TARGETS * len(METHODS)
    for row in rows:
        assert (out / row["overlay_path"]).is_file() and (out / row["heatmap_path"]).is_file()


@pytest.fixture
def manifest(toy, tmp_path) -> Path:
    write_images(tmp_path / "images", IMAGES)
    return write_manifest(tmp_path, toy, tmp_path / "images", methods=METHODS, targets={"topk": TARGETS})


@pytest.mark.parametrize("stop", [pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                  pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGKILL])
def test_stopped_run_resumes(manifest, stop):
    out, image = manifest.parent / "out", manifest.parent / "images" / f"img{GATE:05d}.png"
    with Gate(image) as gate:
        process = start_run(manifest)
        gate.wait_until_read(process)  # the run cannot finish before the signal
        wait_for_rows(out / "index.csv", 40, process)
        process.send_signal(stop)
        gate.release()
        output = process.communicate(timeout=60)[0]
    if stop == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130, output
        assert "interrupted after" in output.splitlines()[-1]
        assert json.loads((out / "run.json").read_text())["interrupted"] is True
    finished = read_index(out)
    assert 0 < len(finished) < IMAGES * TARGETS * len(METHODS)
    assert image.name not in {row["image"] for row in finished}, "the image being read when stopped is not recorded"
    cv2.imwrite(str(image), smooth_image(48, 64, seed=GATE))  # the picture write_images made
    kept = {(row["image"], row["target_class"], row["method"]): row for row in finished}

    rerun = start_run(manifest)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    done_before = len({row["image"] for row in finished})
    assert f"({done_before} already done)" in output.splitlines()[-1]
    assert_complete(out)
    for row in read_index(out):
        key = (row["image"], row["target_class"], row["method"])
        if key in kept:
            assert row == kept[key], "finished rows are kept as they were"


def test_torn_line_and_incomplete_image_are_redone(manifest):
    out = manifest.parent / "out"
    assert start_run(manifest).wait(timeout=300) == 0
    lines = (out / "index.csv").read_bytes().splitlines(keepends=True)
    # drop one row of the first image (an incomplete group) and cut the last line in half (a torn write)
    first_image = lines[1].split(b",")[0]
    damaged = [lines[0], *lines[2:-1], lines[-1][: len(lines[-1]) // 2]]
    (out / "index.csv").write_bytes(b"".join(damaged))
    rerun = start_run(manifest)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    assert f"done: 2 images ({IMAGES - 2} already done)" in output.splitlines()[-1]
    assert_complete(out)
    assert any(row["image"].encode() == first_image for row in read_index(out))


def _peak_rss_kb(manifest: Path) -> int:
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would count the forked pytest process.
    code = ("import re, sys; from onnxcam.runner.cli import main; rc = main(['run', sys.argv[1], '--quiet']); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(manifest)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_is_flat_in_the_number_of_images(toy, tmp_path):
    """Peak RSS for 2,000 images is within 20% of that for 200 (bounded queues, streamed listing)."""
    peaks = {}
    for count in (200, 2000):
        folder = tmp_path / str(count)
        write_images(folder / "images", count, size=(120, 160), ext="jpg")
        peaks[count] = _peak_rss_kb(write_manifest(folder, toy, folder / "images", methods=["gradcam"],
                                                   runtime={"providers": ["cpu"], "batch_size": 16, "workers": 2}))
    print(f"peak RSS: 200 images {peaks[200] / 1024:.0f} MiB, 2000 images {peaks[2000] / 1024:.0f} MiB")
    assert peaks[2000] <= 1.2 * peaks[200]
