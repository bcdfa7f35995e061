"""Synthetic scenes for semantic segmentation: a few shapes on textured backgrounds, with their label maps.

No pretrained segmenter ships offline; these scenes train tools/tiny_segmenter.py and feed the segmentation tests and
demo. Each scene has 1-4 objects (circle, square, triangle; apart), each of its own vivid colour of any hue, so that
colour alone does not give the class away, on a greyish background of smooth noise, stripes or a gradient.

    python tools/segmentation_scenes.py OUT_DIR --count N --seed S
        # OUT_DIR/images/NAME.png (RGB), OUT_DIR/masks/NAME.png (VOC-style indexed PNGs), OUT_DIR/classes.txt
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from onnxcam.runner.outputs.formats import VOC_PALETTE
from PIL import Image

CLASSES = ("background", "circle", "square", "triangle")
IGNORE = 255  # VOC's "void" label: the border around each object, which no loss or score counts
SIZE = 128
TINT = 12  # how far a background's colours are from grey, at most, in each channel
MIN_CONTRAST = 80  # the least difference, in some channel, between an object's colour and what it covers
GAP = 3  # the least distance in pixels between two objects
PLACES = 20  # tries to place an object clear of the others
BORDER = 1  # pixels of IGNORE on each side of an object's outline (VOC draws about 1% of the image: 5 px of 500)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A vivid colour of any hue: saturation 0.6 to 1, value 0.45 to 1."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0.6, 1) * 255, rng.uniform(0.45, 1) * 255]]], np.float32)
    return cv2.cvtColor(hsv.round().astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """HxWx3 float32 on [0, 255]: smooth noise, stripes at a random angle, or a linear gradient between two greys of
    any level, tinted alike. Greyish backgrounds and vivid objects: what tells an object from its background is colour,
    what tells its class is only its shape (a network trained in a minute does not learn more from random colours).
    The noise's and the stripes' grain (4 to 10 px) is finer than the objects (20 to 56 px across)."""
    tint = rng.uniform(-TINT, TINT, 3)
    first, second = (np.clip(rng.uniform(20, 235) + tint, 0, 255) for _ in range(2))
    kind = rng.integers(3)
    if kind == 0:  # smooth noise: a random grid of 12 to 32 cells a side, upsampled
        cells = int(rng.integers(12, 33))
        weight = cv2.resize(rng.random((cells, cells)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    else:
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
        angle = rng.uniform(0, np.pi)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        if kind == 1:  # stripes, 12 to 32 periods across the image
            weight = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(12, 32) * along + rng.uniform(0, 2 * np.pi))
        else:
            weight = (along - along.min()) / (along.max() - along.min())
    weight = np.clip(weight, 0, 1)[:, :, None]
    return first * (1 - weight) + second * weight


def _shape_mask(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """A boolean HxW mask of one object of class `cls` (1 circle, 2 square, 3 triangle) at a random place and angle."""
    radius = rng.uniform(0.08, 0.22) * size  # the circumscribed circle's
    centre = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
    mask = np.zeros((size, size), np.uint8)
    if cls == 1:
        cv2.circle(mask, (round(centre[0]), round(centre[1])), round(radius), 1, thickness=-1)
    else:
        corners = 4 if cls == 2 else 3
        angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(corners) / corners
        points = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def scene(seed: int | Sequence[int], size: int = SIZE, border: int = BORDER) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 HxWx3 RGB, label map uint8 HxW) for `seed`; labels index CLASSES, IGNORE on a `border` (0: none)."""
    rng = np.random.default_rng(seed)
    image = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, len(CLASSES)))
        taken = cv2.dilate(label, np.ones((2 * GAP + 1,) * 2, np.uint8)) > 0
        for _ in range(PLACES):  # objects do not touch, so each keeps its whole outline; else it is left out
            mask = _shape_mask(rng, cls, size)
            if not (mask & taken).any():
                break
        else:
            continue
        under = image[mask].mean(axis=0)
        colour = _colour(rng)
        while np.abs(colour - under).max() < MIN_CONTRAST:  # an object must stand out from what lies under it
            colour = _colour(rng)
        image[mask] = colour
        label[mask] = cls
    image += rng.normal(0, rng.uniform(2, 12), image.shape)  # sensor-like noise, on objects and background alike
    if border:
        kernel = np.ones((2 * border + 1, 2 * border + 1), np.uint8)
        outline = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
        label[outline] = IGNORE
    return np.clip(image, 0, 255).round().astype(np.uint8), label


def write_scenes(folder: Path, count: int, seed: int, size: int = SIZE, border: int = BORDER) -> list[str]:
    """Write scene (seed, i) for i < count as images/NAME.png and masks/NAME.png (indexed, VOC's palette) and
    classes.txt (one name a line, index order) under `folder`; return the names."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    palette = VOC_PALETTE
    names = []
    for index in range(count):
        image, label = scene((seed, index), size, border)
        name = f"scene{index:04d}"
        Image.fromarray(image).save(folder / "images" / f"{name}.png")
        mask = Image.frombytes("P", (size, size), label.tobytes())
        mask.putpalette(palette)
        mask.save(folder / "masks" / f"{name}.png")
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for images/, masks/ and classes.txt")
    parser.add_argument("--count", type=int, default=24, help="how many scenes (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="the set's seed; scene i is scene((seed, i))")
    parser.add_argument("--size", type=int, default=SIZE, help=f"side in pixels (default {SIZE})")
    parser.add_argument("--border", type=int, default=BORDER,
                        help=f"pixels of {IGNORE} (ignore) each side of an outline in the masks; 0: none")
    args = parser.parse_args(argv)
    names = write_scenes(args.out, args.count, args.seed, args.size, args.border)
    print(f"wrote {len(names)} scenes to {args.out} (classes: {', '.join(CLASSES)})")


if __name__ == "__main__":
    main()
