"""Helpers for runner tests: images on disk, manifests, reading index.csv."""

from __future__ import annotations

import csv
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
