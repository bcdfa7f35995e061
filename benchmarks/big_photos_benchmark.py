"""Big photographs (`make bench-big`): peak RSS, seconds and bytes written for a run over camera-sized JPEGs, and
the same for ordinary photographs, each `onnxcam run` in its own process. A script, not a test; run it with
nothing else running.

    python benchmarks/big_photos_benchmark.py [--model exports/efficientnet-lite0.onnx] [--count 8]
        [--size 8000x6000] [--batch-size N] [--workers N] [--ordinary 64] [--python PYTHON ...] [--set KEY=VALUE ...]
        [--smoke]

The big JPEGs are scikit-image's photographs upscaled with a little noise (so they compress like camera
JPEGs). Batch size and workers are the manifest's defaults unless given. `--python` (repeatable) runs each
named installation's onnxcam on the same files, one after the other, for a before/after comparison in one run;
`--set` adds manifest keys, e.g. `--set runtime.memory_budget=1GB --set output.overlays.max_side=original`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from _common import measured_run, parse, smoke_graph
from sample_photos import write_photos

METHODS = ["gradcam", "gradcam++", "layercam", "guided_backprop"]
DISTINCT = 8


def big_jpegs(folder: Path, photos: list[Path], count: int, width: int, height: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        if i >= DISTINCT:  # more than a few distinct pictures only costs time and disk: links to them
            os.link(folder / f"big{i % DISTINCT:04d}.jpg", folder / f"big{i:04d}.jpg")
            continue
        small = cv2.imread(str(photos[i % len(photos)]))
        big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        big = cv2.add(big, rng.integers(0, 12, big.shape, np.uint8))  # sensor-like noise: camera-sized files
        cv2.imwrite(str(folder / f"big{i:04d}.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
        del big


def setting(manifest: dict, assignment: str) -> None:
    key, value = assignment.split("=", 1)
    *parents, last = key.split(".")
    for parent in parents:
        manifest = manifest.setdefault(parent, {})
    manifest[last] = yaml.safe_load(value)


def run(python: str, model: Path, images: Path, out: Path, args) -> dict[str, float]:
    runtime = {"providers": ["cpu"]} | {key: value for key, value in (("batch_size", args.batch_size),
                                                                     ("workers", args.workers)) if value}
    manifest = {"model": str(model.resolve()), "images": {"root": str(images)}, "methods": METHODS,
                "output": {"dir": str(out)}, "runtime": runtime}
    for assignment in args.set:
        setting(manifest, assignment)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    start = time.perf_counter()
    peak = measured_run(path, python)
    seconds = time.perf_counter() - start
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    count = sum(1 for _ in images.iterdir())
    return {"peak_mib": peak, "seconds": seconds,
            "written_mb": written / 1e6, "images_per_s": count / seconds, "images": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("exports/efficientnet-lite0.onnx"))
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--size", default="8000x6000")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--ordinary", type=int, default=64, help="ordinary photographs in the second run (0: none)")
    parser.add_argument("--python", action="append", help="an installation's python (default: this one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parse(parser, model=None, count=2, size="1200x900", ordinary=2)
    if args.model and not args.model.is_file():
        sys.exit(f"big_photos_benchmark: {args.model}: no such file; run `make export` first or pass --model")
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="onnxcam-big-") as tmp:
        tmp = Path(tmp)
        args.model = args.model or smoke_graph(tmp)
        photos = write_photos(tmp / "photos")
        big_jpegs(tmp / "big", photos, args.count, width, height)
        jpeg_mb = sum(f.stat().st_size for f in (tmp / "big").iterdir()) / 1e6  # links counted as files
        print(f"{args.count} JPEGs of {width}x{height} ({width * height / 1e6:.0f} MP, {jpeg_mb:.0f} MB) and "
              f"{args.ordinary} scikit-image photographs (303x384 to 1000x872); methods {', '.join(METHODS)}; batch "
              f"{args.batch_size or 'default'}, workers {args.workers or 'default'}"
              f"{'; ' + ', '.join(args.set) if args.set else ''}")
        (tmp / "ordinary").mkdir()
        for i in range(args.ordinary):
            (tmp / "ordinary" / f"{i:04d}.jpg").write_bytes(photos[i % len(photos)].read_bytes())
        for k, python in enumerate(args.python or [sys.executable]):
            print(f"[{python}]")
            for name in ("big", "ordinary") if args.ordinary else ("big",):
                figures = run(python, args.model, tmp / name, tmp / f"out-{name}-{k}", args)
                print(f"  {name + ':':9} peak RSS {figures['peak_mib']:6.0f} MiB, {figures['seconds']:6.1f} s, "
                      f"{figures['images_per_s']:6.2f} images/s, {figures['written_mb']:8.1f} MB written")


if __name__ == "__main__":
    main()
