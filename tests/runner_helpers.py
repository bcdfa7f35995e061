"""Helpers for runner tests: images on disk, manifests, reading index.csv."""

from __future__ import annotations

import csv
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import yaml


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A BGR uint8 picture with structure (blurred noise), not flat colour."""
    noise = np.random.default_rng(seed).integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def write_images(folder: Path, count: int, size: tuple[int, int] = (48, 64), ext: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.{ext}"
        cv2.imwrite(str(path), smooth_image(*size, seed=i))
        paths.append(path)
    return paths


def write_manifest(folder: Path, model: Path, images: Path | dict, methods=("gradcam",), **sections) -> Path:
    manifest = {
        "model": str(model),
        "images": {"root": str(images)} if isinstance(images, Path) else images,
        "methods": list(methods),
        "output": {"dir": str(folder / "out")},
        "runtime": {"providers": ["cpu"], "batch_size": 4, "workers": 2},
    }
    manifest.update(sections)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    return path


def read_index(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


class FlakyBackend:
    """A model backend that hands every call to `inner` except the `fail_at`-th call asking for `outputs`
    (any call when None), which raises RuntimeError(message): a batch that fails on the device."""

    def __init__(self, inner, fail_at: int, message: str, outputs: tuple[str, ...] | None = None):
        self.inner, self.fail_at, self.message, self.outputs = inner, fail_at, message, outputs
        self.provider, self.precision, self.notes, self.calls = inner.provider, inner.precision, inner.notes, 0

    def run(self, outputs, inputs, targets):
        if self.outputs is None or tuple(outputs) == self.outputs:
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError(self.message)
        return self.inner.run(outputs, inputs, targets)


# A shell without job control starts background jobs with SIGINT ignored, and children inherit that (so would
# this test's run under `make test &`); the wrapper restores Python's Ctrl-C handling first.
RUN = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
       "from onnxcam.runner.cli import main; sys.exit(main(['run', *sys.argv[1:]]))")


def start_run(manifest: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(manifest), *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_rows(index: Path, rows: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if index.exists() and index.read_bytes().count(b"\n") > rows:
            return
        time.sleep(0.01)
    raise AssertionError(f"the run did not write {rows} rows in time: {process.poll()}")


class Gate:
    """A FIFO in an image's place: the run that reads it blocks until the test releases it, so it is still running
    when the test signals it (on any machine, however fast). The run only reads an image once the images listed
    before it are (nearly all) done."""

    def __init__(self, path: Path):
        self.path, self.write_end = path, None
        path.unlink(missing_ok=True)
        os.mkfifo(path)

    def wait_until_read(self, process: subprocess.Popen) -> None:
        """Returns once the run has the FIFO open for reading (a writer can open it only then); the write end this
        opens keeps the reader blocked until `release`. The deadline is a safety net, not a timing."""
        deadline = time.monotonic() + 300
        while self.write_end is None:
            try:
                self.write_end = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the run did not read {self.path.name}: {process.poll()}") from None
                time.sleep(0.01)

    def release(self) -> None:
        """Ends the reader's wait (end of file) and removes the FIFO, so that nothing opens it again."""
        if self.write_end is not None:
            os.close(self.write_end)
            self.write_end = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def heatmap_at_image_size(out: Path, row: dict[str, str]) -> np.ndarray:
    """The one-liner of docs/outputs.md: a compact npy heatmap at the image's size, scaled to [0,1]."""
    m = np.load(out / row["heatmap_path"]).astype(np.float32)
    x0, y0, x1, y1 = (int(row[f"region_{c}"]) for c in ("x0", "y0", "x1", "y1"))
    full = np.zeros((int(row["height"]), int(row["width"])), np.float32)
    full[y0:y1, x0:x1] = cv2.resize(m, (x1 - x0, y1 - y0))
    return (full - full.min()) / (np.ptp(full) or 1)
