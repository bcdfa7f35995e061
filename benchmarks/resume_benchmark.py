"""Resume at scale (`make bench-resume`): peak RSS and time to the first new image when an output.dir already
holds a large index.csv. A script, not a test; run it with nothing else running.

    python benchmarks/resume_benchmark.py [--model exports/efficientnet-lite0.onnx] [--images 1000000] [--new 4]
                                          [--torn] [--walk] [--folder DIR] [--smoke]

Writes, into a scratch folder: a list file naming `--images` done images (they need not exist: done images are
never opened) followed by `--new` real photographs (with `--walk`: a folder holding an empty file for every done
image and the photographs, which the run walks), an index.csv holding two methods' rows for every done image
(as a real run writes them), the run stamp, and the manifest. Then runs `onnxcam run` in its own process and
prints its peak RSS (VmHWM), the seconds from its start to the first new image's rows in index.csv, and the
index's size. `--torn` cuts the index's last line in half, so the resume must also rewrite the file.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import RUN, parse, peak_mib, smoke_graph
from onnxcam.runner.manifest import load_manifest
from onnxcam.runner.outputs.index import COLUMNS
from onnxcam.runner.outputs.stamp import run_identity, write_stamp
from sample_photos import write_photos

METHODS = ("gradcam", "layercam")


def done_key(i: int) -> str:
    return f"photos/{i // 1000:04d}/{i:07d}.jpg"


def write_index(path: Path, images: int) -> None:
    """Rows shaped like a real run's: every column filled as a top-1 run with overlays and npy heatmaps fills it."""
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        buffer = io.StringIO(newline="")
        chunk = csv.writer(buffer)
        for i in range(images):
            key = done_key(i)
            for method in METHODS:
                chunk.writerow([key, "ok", "", 500, 375, 281, "tabby", "0.612345", 281, "tabby",
                                "0.612345", method, "", f"{key}.{method}.281.npy", f"{key}.{method}.281.jpg", 211, 157,
                                0, 0, 500, 375, 500, 375, *([""] * (len(COLUMNS) - 23))])
            if i % 10_000 == 9_999:
                file.write(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()
        file.write(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("exports/efficientnet-lite0.onnx"))
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=4)
    parser.add_argument("--torn", action="store_true")
    parser.add_argument("--walk", action="store_true", help="images in a folder (empty files) instead of a list")
    parser.add_argument("--folder", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    args = parse(parser, model=None, images=1000)
    if args.model and not args.model.is_file():
        sys.exit(f"resume_benchmark: {args.model}: no such file; run `make export` first or pass --model")
    folder = args.folder or Path(tempfile.mkdtemp(prefix="onnxcam-resume-"))
    try:
        args.model = args.model or smoke_graph(folder)
        photos = write_photos(folder / "new")[:args.new]
        if args.walk:
            for i in range(args.images):
                if i % 1000 == 0:
                    (folder / done_key(i)).parent.mkdir(parents=True)
                (folder / done_key(i)).touch()
            images = {"root": ".", "include": ["photos/**/*.jpg", "new/*.jpg"]}
        else:
            with open(folder / "files.txt", "w", encoding="utf-8") as listing:
                listing.writelines(f"{done_key(i)}\n" for i in range(args.images))
                listing.writelines(f"new/{photo.name}\n" for photo in photos)
            images = {"list": "files.txt"}
        (folder / "manifest.yaml").write_text(yaml.safe_dump({
            "model": str(args.model.resolve()), "images": images, "methods": list(METHODS),
            "output": {"dir": "out"}, "runtime": {"providers": ["cpu"], "batch_size": 8, "workers": 2}}))
        out = folder / "out"
        out.mkdir(exist_ok=True)
        index = out / "index.csv"
        start = time.perf_counter()
        write_index(index, args.images)
        if args.torn:
            with open(index, "ab") as file:
                file.write(b"photos/half-written.jpg,ok,,500,")
        write_stamp(out, run_identity(load_manifest(folder / "manifest.yaml")))
        size = index.stat().st_size
        print(f"index.csv: {args.images:,} done images x {len(METHODS)} methods, {size / 1e6:.0f} MB "
              f"(written in {time.perf_counter() - start:.1f} s){', last line torn' if args.torn else ''}")

        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", RUN, str(folder / "manifest.yaml")], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        first_new = None
        while first_new is None:
            running = process.poll() is None  # before the look at the index, so rows written last are seen
            with open(index, "rb") as file:
                file.seek(max(0, file.seek(0, 2) - 4096))
                if b"\nnew/" in file.read():
                    first_new = time.perf_counter() - start
            if not running:
                break
            time.sleep(0.01)
        output = process.communicate()[0]
        if process.returncode != 0:
            sys.exit(f"resume_benchmark: the run failed ({process.returncode}):\n{output}")
        if first_new is None:
            sys.exit("resume_benchmark: the run ended without a new image's rows in index.csv; give --new 1 or more")
        peak = peak_mib(output)
        print(f"onnxcam run (resume): peak RSS {peak:.0f} MiB, first new image's rows after {first_new:.1f} s, "
              f"whole run {time.perf_counter() - start:.1f} s")
        print("  " + next(line for line in output.splitlines() if line.startswith("onnxcam run: done")))
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
