"""Files under output.dir: atomic writes whose temporary names are unique across processes and hosts, the clearing
of those a killed process left, and the guard that keeps every output path inside output.dir."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path


class OutputDirError(ValueError):
    """output.dir cannot take this run (in use, another run's results, not writable): one line naming the fix."""


SCRATCH = ".onnxcam-partial"  # output.dir's folder of files being written (heatmaps, overlays)


def temporary_name(path: Path, scratch: Path | None = None) -> Path:
    """A hidden name in `scratch` (else beside `path`), unique across threads, processes and machines."""
    return (scratch or path.parent) / f".{path.name}.{uuid.uuid4().hex}.partial"


def write_atomic(path: Path, data: bytes | Iterable[bytes], scratch: Path | None = None) -> None:
    """Write `data` (bytes, or blocks of bytes) to a temporary name, then rename it to `path`: a crash never leaves
    half a file, and several writers (threads, processes, nodes) can write into one folder. The temporary file is
    beside the target, or in `scratch` (a folder on the same filesystem), where a crash's leftovers are found
    without walking the tree. Folders are made when the file system says they are missing, not asked about
    before every file."""
    partial = temporary_name(path, scratch)
    try:
        try:
            file = open(partial, "wb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            partial.parent.mkdir(parents=True, exist_ok=True)
            file = open(partial, "wb")  # noqa: SIM115
        with file:
            for block in [data] if isinstance(data, bytes) else data:
                file.write(block)
        try:
            os.replace(partial, path)
        except (FileNotFoundError, NotADirectoryError):  # mkdir says why when a file is in the folder's way
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def clear_partials(output_dir: Path) -> None:
    """Deletes what killed writers left: `.*.partial` files at the top of output.dir (index rewrites, the stamp,
    reports) and the scratch folder. Only while no writer is running (the run's lock held, its workers gone)."""
    for stale in output_dir.glob(".*.partial"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(output_dir / SCRATCH, ignore_errors=True)


def inside(folder: Path, relative: str) -> Path:
    """folder / relative, refusing a path that would leave the folder (ValueError, one line). A check on the text
    (no file system calls: Path.resolve walks every part with lstat in Python, holding the GIL, and the write
    stage calls this for every file); keys are made safe when listed, and output.dir itself is resolved."""
    path = os.path.normpath(os.path.join(folder, relative))
    if not path.startswith(os.path.join(folder, "")):
        raise ValueError(f"output path {relative!r} would leave output.dir; rename the file")
    return Path(path)
