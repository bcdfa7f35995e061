"""A run takes output.dir's lock before it loads the model: a run on a folder another run holds stops (exit 2, naming
the holder) without opening a model session; a run on a free folder opens its model only once it holds the lock.

The order is observed, not timed: the lock is held by this test while the second run starts, and the model is opened
through a factory passed to Run that records what it saw when it was called.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.manifest import load_manifest
from onnxcam.runner.model.registry import open_backend
from onnxcam.runner.outputs.files import OutputDirError
from onnxcam.runner.outputs.lock import LOCK_NAME, RunLock
from onnxcam.runner.run import Run
from runner_helpers import write_images, write_manifest


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net")[1].path


class RecordingFactory:
    """open_backend, noting for each call who held output.dir's lock at that moment (the lock file names the pid)."""

    def __init__(self, folder: Path):
        self.folder, self.holders = folder, []

    def __call__(self, *args, **kwargs):
        note = (self.folder / LOCK_NAME).read_text() if (self.folder / LOCK_NAME).exists() else ""
        self.holders.append(json.loads(note)["pid"] if note else None)
        return open_backend(*args, **kwargs)


def test_a_run_on_a_locked_folder_stops_before_it_opens_the_model(toy, tmp_path):
    write_images(tmp_path / "images", 2)
    manifest = load_manifest(write_manifest(tmp_path, toy, tmp_path / "images"))
    factory = RecordingFactory(manifest.output_dir)
    run = Run(manifest, quiet=True, open_model=factory)  # the model serves the methods: checked, nothing opened
    manifest.output_dir.mkdir()
    with RunLock(manifest.output_dir), pytest.raises(OutputDirError, match=rf"is in use by pid {os.getpid()} on "):
        run.run()
    assert factory.holders == [], "no model session was opened"
    assert not (manifest.output_dir / "index.csv").exists()


def test_the_model_opens_once_the_run_holds_the_lock(toy, tmp_path):
    write_images(tmp_path / "images", 2)
    manifest = load_manifest(write_manifest(tmp_path, toy, tmp_path / "images"))
    factory = RecordingFactory(manifest.output_dir)
    tally = Run(manifest, quiet=True, open_model=factory).run()
    assert (tally.images, tally.errors) == (2, 0)
    assert factory.holders == [os.getpid()], "opened once, with this run's note in the lock file"


def test_the_cli_on_a_locked_folder_exits_2_in_one_line(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    path = write_manifest(tmp_path, toy, tmp_path / "images")
    (tmp_path / "out").mkdir()
    with RunLock(tmp_path / "out"):
        assert main(["run", str(path), "--quiet"]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"onnxcam run: error: output.dir: {tmp_path / 'out'} is in use by "
                                                   f"pid {os.getpid()} on "), lines
    assert lines[0].endswith("wait for that run to end, or pick another output.dir")
