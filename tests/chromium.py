"""Finding a Chromium for the report's browser tests and benchmark (Playwright drives it; its own browser download
is not needed)."""

from __future__ import annotations

import os
import shutil

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """$ONNXCAM_CHROMIUM, else the first Chromium or Chrome on PATH, else None."""
    if os.environ.get("ONNXCAM_CHROMIUM"):
        return os.environ["ONNXCAM_CHROMIUM"]
    return next((path for name in NAMES if (path := shutil.which(name))), None)
