"""Progress: a live bar (images/s, ETA) on a terminal, plain periodic lines otherwise, nothing with --quiet."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, quiet: bool = False, stream: TextIO | None = None, every_s: float = 10.0):
        self.total, self.quiet, self.stream = total, quiet, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = 0.2 if self.tty else every_s
        self.done = self.errors = 0
        self.start = self.last = time.monotonic()

    def status(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        percent = 100 * self.done / self.total if self.total else 100.0
        return (f"{self.done}/{self.total} images ({percent:.0f}%), {self.errors} errors, "
                f"{rate:.1f} images/s, elapsed {_duration(elapsed)}, ETA {eta}")

    def update(self, images: int, errors: int = 0) -> None:
        self.done += images
        self.errors += errors
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.show()

    def show(self) -> None:
        if self.quiet:
            return
        if self.tty:
            width = 24
            filled = int(width * self.done / self.total) if self.total else width
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.status()}\033[K")
        else:
            self.stream.write(f"onnxcam run: {self.status()}\n")
        self.stream.flush()

    def close(self) -> None:
        """On a terminal, leave the bar at its final state."""
        if self.tty and not self.quiet:
            self.show()
            self.stream.write("\n")
            self.stream.flush()
