"""Where thumbnails live under output.dir: thumbs/<key>.photo.jpg for a photograph and thumbs/<overlay stem>.jpg
(<key>.<method>.<class>.jpg) for an overlay. report.html's script builds the same paths (THUMBS, PHOTO_SUFFIX)."""

from __future__ import annotations

THUMBS = "thumbs"
PHOTO_SUFFIX = ".photo.jpg"
THUMBNAIL_QUALITY = 80


def photo_thumbnail_path(key: str) -> str:
    return f"{THUMBS}/{key}{PHOTO_SUFFIX}"


def thumbnail_path(stem: str) -> str:
    return f"{THUMBS}/{stem}.jpg"
