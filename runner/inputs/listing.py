"""Finding input images: a directory walk with include globs, or a list file; each becomes an ImageRef."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageRef:
    key: str  # the image's name in index.csv and below output.dir: a relative POSIX path
    path: str  # where to read it (text rather than a Path: listing a million files stays in seconds)


def _include_pattern(patterns: tuple[str, ...]) -> re.Pattern:
    """The include globs as one regular expression over lower-cased keys (a leading **/ also matches no folder)."""
    globs = [pattern.lower() for pattern in patterns]
    globs += [glob[3:] for glob in globs if glob.startswith("**/")]
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


def walk_images(root: Path, include: tuple[str, ...]) -> Iterator[ImageRef]:
    """Files under root matching an include glob (case-insensitive), in a stable sorted order, lazily."""
    matches = _include_pattern(include).match
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        prefix = Path(folder).relative_to(root).as_posix() + "/"
        prefix = "" if prefix == "./" else prefix
        for name in sorted(files):
            key = prefix + name
            if matches(key.lower()):
                yield ImageRef(key, os.path.join(folder, name))


def safe_key(entry: str) -> str:
    """A relative POSIX path that cannot leave the output folder: no root, drive, '..', '.' or empty parts."""
    parts = [part for part in entry.replace("\\", "/").split("/") if part not in ("", ".", "..") and
             not part.endswith(":")]
    return "/".join(parts) or "_"


def list_images(list_file: Path) -> Iterator[ImageRef]:
    """Paths from a list file (one a line, '#' comments), relative to the list file's folder. A path's key is its
    place below that folder, normalised as text (no file system calls, so a million lines list in seconds); a
    path outside it keeps its own parts, made safe."""
    base = str(list_file.parent.resolve())
    with open(list_file, encoding="utf-8") as lines:
        for line in lines:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                path = os.path.normpath(os.path.join(base, entry))
                key = path[len(base) + 1:] if path.startswith(base + os.sep) else entry
                yield ImageRef(safe_key(key), path)
