"""Finding input images: a directory walk with include globs, or a list file; each becomes an ImageRef."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class ImageRef:
    key: str  # the image's name in index.csv and below output.dir: a relative POSIX path
    path: Path


def _matches(relative: str, patterns: tuple[str, ...]) -> bool:
    lowered = relative.lower()
    for pattern in patterns:
        pattern = pattern.lower()
        if fnmatch.fnmatch(lowered, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatch(lowered, pattern[3:]):  # ** also matches no folder
            return True
    return False


def walk_images(root: Path, include: tuple[str, ...]) -> Iterator[ImageRef]:
    """Files under root matching an include glob (case-insensitive), in a stable sorted order, lazily."""
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        relative_folder = Path(folder).relative_to(root)
        for name in sorted(files):
            key = (relative_folder / name).as_posix()
            if _matches(key, include):
                yield ImageRef(key, Path(folder) / name)


def safe_key(entry: str) -> str:
    """A relative POSIX path that cannot leave the output folder: no root, drive, '..' or '.' parts."""
    parts = [part for part in PurePosixPath(entry.replace("\\", "/")).parts
             if part not in ("/", ".", "..") and not part.endswith(":")]
    return "/".join(parts) or "_"


def list_images(list_file: Path) -> Iterator[ImageRef]:
    """Paths from a list file (one a line, '#' comments), relative to the list file's folder."""
    with open(list_file, encoding="utf-8") as lines:
        for line in lines:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                path = (list_file.parent / entry).resolve()
                try:
                    key = path.relative_to(list_file.parent.resolve()).as_posix()
                except ValueError:
                    key = safe_key(entry)
                yield ImageRef(safe_key(key), path)
