"""Files under output.dir: atomic writes whose temporary names are unique across processes and hosts, the sweep
of those a crash left, and the guard that keeps every output path inside output.dir."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path


class OutputDirError(ValueError):
    """output.dir cannot take this run (in use, another run's results, not writable): one line naming the fix."""


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path`, unique across threads, processes and machines sharing the folder."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write `data` (bytes, or blocks of bytes) to a temporary name beside the target, then rename: a crash never
    leaves half a file, and several writers (threads, processes, nodes) can write into one folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_name(path)
    try:
        with open(partial, "wb") as file:
            for block in [data] if isinstance(data, bytes) else data:
                file.write(block)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def sweep_partials(folder: Path) -> int:
    """Deletes the temporary files of writes a killed process never finished, anywhere under `folder`; returns
    how many. Walks the whole tree, so runs only after a crash."""
    count = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            if name.startswith(".") and name.endswith(".partial"):
                Path(parent, name).unlink(missing_ok=True)
                count += 1
    return count


def inside(folder: Path, relative: str) -> Path:
    """folder / relative, refusing a path that would leave the folder (ValueError, one line)."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder):
        raise ValueError(f"output path {relative!r} would leave output.dir; rename the file")
    return path
