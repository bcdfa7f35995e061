"""Real photographs shipped with scikit-image, written as JPEG/PNG files (the demo's and the tests' images).

    python tools/sample_photos.py DIR      # writes DIR/<name>.jpg and prints how many (make demo-images)
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

# Colour photographs (the cat, the coffee cup, the rocket...) plus a few grey ones; all ship inside the wheel.
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry",
          "hubble_deep_field", "camera", "coins", "moon", "page")


def load(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.dtype != np.uint8:
        image = (image * 255).astype(np.uint8) if image.max() <= 1 else image.astype(np.uint8)
    return image


def write_photos(folder: Path, names: tuple[str, ...] = PHOTOS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        try:
            image = load(name)
        except Exception:  # noqa: BLE001 - some skimage images need a download; skip those offline
            continue
        bgr = image[:, :, 2::-1] if image.ndim == 3 else image
        path = folder / f"{name}.jpg"
        cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "demo/images")
    print(f"wrote {len(write_photos(target))} photographs to {target}")

