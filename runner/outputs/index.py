"""index.csv: one row per (image, target, method), appended image by image, and resuming from it.

All rows of one image go out in a single unbuffered write by the one process that holds the folder's lock,
so a crash leaves whole images (and at worst one torn last line). On resume the file is streamed once: an
image counts as done when its rows are an error row, a no-target row, or every manifest method for every
target. Torn lines, incomplete images and any later copy of a done image are cut out by copying the file's
other bytes, so memory grows with the number of images (the done ones' keys, the byte ranges of the ones cut
out), never with rows or columns.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from onnxcam.runner.evaluate.metrics import COLUMNS as METRIC_COLUMNS
from onnxcam.runner.evaluate.metrics import REGION_COLUMNS
from onnxcam.runner.outputs.files import OutputDirError, write_atomic

LAYOUT = "3"  # index.csv's columns and what the files hold (2: compact heatmaps, region and overlay size columns;
# 3: the channel column)
COLUMNS = ("image", "status", "error", "width", "height", "pred_class", "pred_label", "pred_score",
           "target_class", "target_label", "target_score", "method", "channel", "heatmap_path", "overlay_path",
           "peak_x", "peak_y", "region_x0", "region_y0", "region_x1", "region_y1", "overlay_width", "overlay_height",
           *METRIC_COLUMNS)
# A segmenter's index has more columns, appended (so every column above keeps its place): its region's kind
# (predicted | given), its share of the model input's pixels, the file of its mask, and the metrics that need a mask;
# target_score is the softmax of the class scores averaged over the region, at the target.
SEGMENTATION_COLUMNS = (*COLUMNS, "target_mask", "target_share", "mask_file", *REGION_COLUMNS)
COLUMN_SET = frozenset(COLUMNS)
IMAGE, STATUS, TARGET, METHOD = (COLUMNS.index(name) for name in ("image", "status", "target_class", "method"))
COPY_BLOCK = 1 << 20


def _complete(rows: list[list[str]], methods: list[str]) -> bool:
    if any(row[STATUS] in ("error", "no_target") for row in rows):
        return len(rows) == 1
    by_target: dict[str, list[str]] = {}
    for row in rows:
        by_target.setdefault(row[TARGET], []).append(row[METHOD])
    return all(sorted(found) == methods for found in by_target.values())


def last_line_end(file: BinaryIO, size: int) -> int:
    """The offset just after the last newline of the file's first `size` bytes (a torn last line ends without one)."""
    position = size
    while position > 0:
        step = min(COPY_BLOCK, position)
        file.seek(position - step)
        block = file.read(step)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return position - step + newline + 1
        position -= step
    return 0


class _Lines:
    """The file's lines as text up to `end`, counting the bytes handed out (csv pulls lines as it needs them)."""

    def __init__(self, file: BinaryIO, end: int):
        self.file, self.position, self.end = file, 0, end

    def __iter__(self) -> Iterator[str]:
        for line in self.file:
            if self.position >= self.end:
                return
            self.position += len(line)
            yield line.decode("utf-8")


class IndexFile:
    """The run's index: `done` holds the keys of images already complete; `append` adds one image's rows."""

    def __init__(self, path: Path, methods: list[str], columns: tuple[str, ...] = COLUMNS):
        self.path, self.done, self.columns, self.column_set = path, set(), columns, frozenset(columns)
        try:
            if path.exists() and path.stat().st_size:
                self._resume(sorted(methods))
            else:
                self._write_header()
            self.file = open(path, "ab", buffering=0)  # noqa: SIM115 - held open for the whole run
        except UnicodeDecodeError:
            raise OutputDirError(f"output.dir: {path} is not an onnxcam index (not UTF-8 text); move it away or "
                                 "pick another output.dir") from None
        except csv.Error as error:
            raise OutputDirError(f"output.dir: {path} is not an onnxcam index ({error}); move it away or pick "
                                 "another output.dir") from None
        except OSError as error:
            raise OutputDirError(f"output.dir: {path}: cannot open it ({error.strerror or error}); pick a folder "
                                 "you can write to") from None

    def _write_header(self) -> None:
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerow(self.columns)
        write_atomic(self.path, buffer.getvalue().encode("utf-8"))

    def _resume(self, methods: list[str]) -> None:
        """Streams the index once; collects done keys and the byte ranges to cut out, then cuts them."""
        with open(self.path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            end = last_line_end(file, size)
            file.seek(0)
            lines = _Lines(file, end)
            reader = csv.reader(lines)
            header = next(reader, None)
            if header is None:  # a torn header line: nothing was written after it
                cuts = None
            elif tuple(header) != self.columns:
                raise OutputDirError(f"output.dir: {self.path} is not an onnxcam index of this version (columns "
                                     "differ); move it away or pick another output.dir")
            else:
                cuts = self._scan(reader, lines, methods) + ([(end, size)] if end < size else [])
        if cuts is None:
            self._write_header()
        elif cuts:
            write_atomic(self.path, self._kept_bytes(cuts))

    def _scan(self, reader, lines: _Lines, methods: list[str]) -> list[tuple[int, int]]:
        """Reads the rows after the header; returns the [start, end) byte ranges of the groups not kept."""
        cuts: list[tuple[int, int]] = []
        group: list[list[str]] = []
        start = position = lines.position
        for row in reader:
            if len(row) != len(self.columns):
                raise OutputDirError(f"output.dir: {self.path} is not an onnxcam index (a row has {len(row)} "
                                     f"fields, not {len(self.columns)}); move it away or pick another output.dir")
            if group and row[IMAGE] != group[0][IMAGE]:
                self._close_group(group, methods, cuts, start, position)
                group, start = [], position
            group.append(row)
            position = lines.position
        if group:
            self._close_group(group, methods, cuts, start, lines.position)
        return cuts

    def _close_group(self, rows: list[list[str]], methods: list[str], cuts: list[tuple[int, int]], start: int,
                     end: int) -> None:
        key = rows[0][IMAGE]
        if key not in self.done and _complete(rows, methods):
            self.done.add(key)
        elif cuts and cuts[-1][1] == start:
            cuts[-1] = (cuts[-1][0], end)
        else:
            cuts.append((start, end))

    def _kept_bytes(self, cuts: list[tuple[int, int]]) -> Iterator[bytes]:
        """The file's bytes outside the cuts, in blocks (the file is closed before it is replaced)."""
        with open(self.path, "rb") as file:
            position = 0
            for cut_start, cut_end in [*cuts, (None, None)]:
                while cut_start is None or position < cut_start:
                    block = file.read(COPY_BLOCK if cut_start is None else min(COPY_BLOCK, cut_start - position))
                    if not block:
                        return
                    position += len(block)
                    yield block
                if cut_end is not None:
                    file.seek(cut_end)
                    position = cut_end

    def append(self, rows: list[dict[str, object]]) -> None:
        """One image's rows, written at once (missing columns empty; a key that is no column is a bug: ValueError).
        csv.writer over lists, not a DictWriter per call: the run's process appends thousands of rows a second."""
        for row in rows:
            if not row.keys() <= self.column_set:
                raise ValueError(f"index rows have no column {sorted(row.keys() - self.column_set)}")
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerows([row.get(column, "") for column in self.columns] for row in rows)
        self.file.write(buffer.getvalue().encode("utf-8"))

    def flush(self) -> None:
        """Makes the rows appended so far durable (before summary.csv and run.json are read from them)."""
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.flush()
        self.file.close()
