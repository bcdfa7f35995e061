"""The CPU stages per image (`make bench-stages`): how many CPU milliseconds the read stage (decode, resize,
normalise), the batch stage's host work (everything but the model) and the write stage (render, colour map,
blend, encode, thumbnails, files) spend on one image, what share of it holds the GIL, and from that how many
images/s the CPU stages allow on more cores. A script, not a test; run it with nothing else running.

    python benchmarks/stage_profile.py [--model exports/efficientnet-lite0.onnx] [--images 96] [--size 500x375]
                                       [--method gradcam] [--no-thumbnails] [--cores 16] [--end-to-end]
                                       [--model-ms 0.15] [--smoke]

Each stage runs over the same images on one thread (CPU ms per image from the process's CPU clock; OpenCV's
own thread pool is turned off, as it would only hide the cost), then on two threads at once; each the best of three
passes, the write stage's into an empty output folder each time. On two cores a
stage that never holds the GIL runs twice as fast on two threads; one that always holds it, no faster. The share
of its time that is serial, s = 2 / speedup - 1 (Amdahl), is the GIL share (it also counts anything else serial,
so it is an upper bound). The batch stage's host work runs in the engine's one thread, so all of it counts as
serial. The projection for N cores with the local engine's threads: min(N x 1000 / total CPU ms, 1000 / serial
ms) images/s (every core busy, or the GIL busy).

With worker processes (`runtime.worker_processes: true`) the read and write stages leave the run's process; what
stays there per image (handing images to the workers and back, the batch stage's host work, index.csv) is
measured by a run over the same JPEGs whose model answers at once (all the run's process's threads, its CPU
clock). The projection for N cores: min((N - 1) x 1000 / (read + write ms), 1000 / the run's process ms), one
core left to the run's process.

What the run's process can feed a fast model is measured apart (the model's time per image `--model-ms`, 0.15: an
H100's float16 ResNet-50): a run whose one worker process hands back a ready model input for each file and writes
only the index rows, so that neither the workers nor the model but the run's process and how well it overlaps with
the model are the limit.

--end-to-end then compares, on this machine, `onnxcam run` over the same JPEGs (its own process, images/s after
its start-up, from run.json) with the compute-only throughput of the same graph and batch size (preprocessed
batches in memory -> the method's maps), the share of its own speed the pipeline keeps.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import yaml
from _common import ROOT, compute_only, measured_run, parse, smoke_graph, write_sized
from onnxcam.runner.inputs.listing import ImageRef, walk_images
from onnxcam.runner.manifest import Manifest, load_manifest
from onnxcam.runner.model.backend import OnnxRuntimeBackend
from onnxcam.runner.model.graph import read_graph_info
from onnxcam.runner.run import Run
from onnxcam.runner.stages import build_stages, output_sets
from onnxcam.runner.stages.items import DecodedImage


def timed(function, items: list, threads: int, before=lambda: None, repeats: int = 3) -> tuple[float, float, list]:
    """(wall seconds, CPU seconds of the process, results) of `function` over `items` on `threads`: the least of
    `repeats` passes (each after `before`), as a shared machine's and file system's noise only ever adds."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        before()
        start, cpu_start = time.perf_counter(), time.process_time()
        if threads == 1:
            results = [function(item) for item in items]
        else:
            with ThreadPoolExecutor(threads) as pool:
                results = [r for chunk in pool.map(lambda chunk: [function(item) for item in chunk],
                                                   [items[k::threads] for k in range(threads)]) for r in chunk]
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - cpu_start)
    return wall, cpu, results


def end_to_end(manifest: Path) -> float:
    """`onnxcam run` in its own process; images/s after its start-up (run.json)."""
    measured_run(manifest)
    report = json.loads((Path(yaml.safe_load(manifest.read_text())["output"]["dir"]) / "run.json").read_text())
    return report["images"] / report["wall_s"]


class InstantModel:
    """A backend that answers with `answers` (one image's outputs, repeated for the batch): at once, or after
    `ms_per_image` per image of the batch with the GIL free, as a GPU's run."""

    provider, precision, notes = "instant", "f32", []

    def __init__(self, answers: dict[str, np.ndarray], ms_per_image: float = 0.0):
        self.answers, self.ms_per_image = answers, ms_per_image

    def run(self, outputs, inputs, targets):
        if self.ms_per_image:
            time.sleep(self.ms_per_image * len(inputs) / 1000)
        return {name: np.repeat(self.answers[name][:1], len(inputs), axis=0) for name in outputs}


class ReadyRead:
    """A read stage that hands back one decoded image's model input for every file, without opening it."""

    def __init__(self, decoded: DecodedImage):
        self.decoded = decoded

    def __call__(self, ref: ImageRef) -> DecodedImage:
        ready = self.decoded
        return DecodedImage(ref, ready.size, ready.render_size, None, ready.tensor, ready.region)

    def memory(self, ref: ImageRef) -> int:
        return 1 << 20


def instant_run(manifest: Manifest, answers: dict[str, np.ndarray], ms_per_image: float = 0.0,
                read: ReadyRead | None = None) -> tuple[int, float, float]:
    """A run of `manifest` in worker processes whose model is an InstantModel (and, given `read`, whose reads hand
    back a ready input): (images, wall seconds, CPU seconds of the run's own process, every thread)."""
    manifest.worker_processes = True
    shutil.rmtree(manifest.output_dir, ignore_errors=True)
    run = Run(manifest, quiet=True, backend=InstantModel(answers, ms_per_image))
    if read is not None:
        run.engine.stages.read = read
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    images = run.run().images
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    shutil.rmtree(manifest.output_dir)
    return images, wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def run_process_ms(manifest_path: Path, answers: dict[str, np.ndarray], images: Path) -> float:
    """CPU ms per image of the run's own process (every thread) when worker processes read and write the JPEGs of
    `images` (enough of them that its start-up and reports weigh little: a run's fixed cost is about 50 ms)."""
    manifest = load_manifest(manifest_path)
    manifest.images_root = images
    count, _, cpu = instant_run(manifest, answers)
    return 1000 * cpu / count


def run_process_ceiling(manifest_path: Path, folder: Path, decoded: DecodedImage, answers: dict[str, np.ndarray],
                        ms_per_image: float, images: int) -> tuple[float, float]:
    """What the run's own process can feed a fast model (images/s over a whole run, with the model answering
    after `ms_per_image`, and at once): one worker process whose reads hand back a ready model input (through
    the pipe, as a read does) and whose writes only make the index rows, so that on two cores neither the
    workers nor the model are the limit, only the run's process (dispatch, the batch stage's host work,
    index.csv) and how well it overlaps with the model."""
    (folder / "empty").mkdir(exist_ok=True)
    for k in range(images):
        (folder / "empty" / f"{k:06d}.jpg").touch()
    manifest = load_manifest(manifest_path)
    manifest.images_root, manifest.workers = folder / "empty", 1
    manifest.overlays = manifest.thumbnails = None
    figures = []
    for ms in (ms_per_image, 0.0):
        count, wall, _ = instant_run(manifest, answers, ms, ReadyRead(decoded))
        figures.append(count / wall)
    return figures[0], figures[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "exports" / "efficientnet-lite0.onnx")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-thumbnails", action="store_true")
    parser.add_argument("--cores", type=int, default=16, help="the core count to project to")
    parser.add_argument("--end-to-end", action="store_true", help="also onnxcam run vs compute only, here")
    parser.add_argument("--model-ms", type=float, default=0.15,
                        help="the fast model's time per image for the run's process's ceiling (0.15: an H100, "
                             "ResNet-50 in float16)")
    parser.add_argument("--run-images", type=int, default=2048, help="JPEGs for the run's process's CPU per image")
    parser.add_argument("--ceiling-images", type=int, default=8192)
    args = parse(parser, model=None, images=4, size="160x120", batch_size=2, run_images=8, ceiling_images=16,
                 end_to_end=True)
    cv2.setNumThreads(1)
    if args.model and not args.model.is_file():
        sys.exit(f"stage_profile: {args.model}: no such file; make export, or give --model")
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="onnxcam-stages-") as tmp:
        args.model = args.model or smoke_graph(Path(tmp))
        profile(args, Path(tmp), size)


def profile(args: argparse.Namespace, folder: Path, size: tuple[int, int]) -> None:
    """Every measurement, its JPEGs and outputs under `folder`; prints the figures."""
    images = write_sized(folder, args.images, size)
    manifest_path = folder / "manifest.yaml"
    manifest_path.write_text(yaml.safe_dump({
        "model": str(args.model.resolve()), "images": {"root": str(images)}, "methods": [args.method],
        "output": {"dir": str(folder / "out"), "heatmaps": "none", "overlays": {"format": "jpg", "quality": 90},
                   "thumbnails": False if args.no_thumbnails else 256},
        "runtime": {"providers": ["cpu"], "batch_size": args.batch_size, "workers": 2}}))
    manifest = load_manifest(manifest_path)
    info = read_graph_info(manifest.model)
    backend = OnnxRuntimeBackend(manifest.model, ["cpu"], output_sets(manifest, info))
    stages = build_stages(manifest, info, backend)
    refs = list(walk_images(images, manifest.include))
    stages.read(refs[0])  # warm-up: OpenCV's first calls

    rows = []
    wall1, cpu1, decoded = timed(stages.read, refs, 1)
    wall2, _, _ = timed(stages.read, refs, 2)
    rows.append(("read (decode, resize, normalise)", cpu1, wall1, wall2))

    batches = [decoded[k:k + args.batch_size] for k in range(0, len(decoded), args.batch_size)]
    stages.explain(batches[0])  # warm-up: the session's first run
    start, model = time.perf_counter(), 0.0
    results = []
    for batch in batches:
        result = stages.explain(batch)
        model += result.costs.model_seconds
        results += result.images
    host_wall = time.perf_counter() - start - model
    host_cpu = host_wall  # the model's own threads are not this thread's; its wall time is taken out
    rows.append(("batch stage, host work (not the model)", host_cpu, host_wall, host_wall))

    stages.write(results[0])

    def new_files() -> None:  # each pass writes new files, as a run does (replacing one costs more)
        shutil.rmtree(manifest.output_dir, ignore_errors=True)

    wall1, cpu1, _ = timed(stages.write, results, 1, new_files)
    wall2, _, _ = timed(stages.write, results, 2, new_files)
    new_files()
    thumbs = "without thumbnails" if args.no_thumbnails else "with thumbnails"
    rows.append((f"write (render, blend, encode; {thumbs})", cpu1, wall1, wall2))

    n = len(refs)
    print(f"{n} JPEGs of {size[0]}x{size[1]}, {args.method}, model {info.model} {info.preprocessing.size}, "
          f"overlays jpg, heatmaps none; model compute {1000 * model / n:.2f} ms per image (ORT, its own threads)")
    print(f"{'stage':<48} {'CPU ms/img':>10} {'1 thread':>10} {'2 threads':>10} {'GIL share':>9}")
    total = serial = 0.0
    for name, cpu, one, two in rows:
        share = 1.0 if one == two else min(1.0, max(0.0, 2 / (one / two) - 1))
        total += 1000 * cpu / n
        serial += 1000 * cpu / n * share
        print(f"{name:<48} {1000 * cpu / n:>10.2f} {n / one:>8.0f}/s {n / two:>8.0f}/s {100 * share:>8.0f}%")
    threads = min(args.cores * 1000 / total, 1000 / serial)
    print(f"CPU stages: {total:.2f} ms of CPU per image, {serial:.2f} ms of it serial (GIL or the engine's thread)")
    print(f"projection, {args.cores} cores: {threads:.0f} images/s with threads (the local engine), "
          f"{args.cores * 1000 / total:.0f} images/s if every core were busy")
    answers = backend.run(stages.explain.outputs, batches[0][0].tensor[None], np.array([-1]))
    process_ms = run_process_ms(manifest_path, answers, write_sized(folder / "run", args.run_images, size))
    workers_ms = 1000 * (rows[0][1] + rows[2][1]) / n
    processes = min((args.cores - 1) * 1000 / workers_ms, 1000 / process_ms)
    print(f"worker processes: the run's own process spends {process_ms:.2f} ms of CPU per image ({args.run_images} "
          f"JPEGs, the model answering at once); projection, {args.cores} cores: {processes:.0f} images/s "
          f"({args.cores - 1} cores x {workers_ms:.2f} ms of reading and writing, or the run's process busy)")
    fed, instant = run_process_ceiling(manifest_path, folder, decoded[0], answers, args.model_ms,
                                       args.ceiling_images)
    print(f"the run's process alone ({args.ceiling_images} images, batch {args.batch_size}, reads handing back a "
          f"ready input, writes making only the rows): {fed:.0f} images/s with a model taking {args.model_ms} ms "
          f"per image (at most {1000 / args.model_ms:.0f}/s), {instant:.0f} images/s with one answering at once")
    if args.end_to_end:
        inputs = np.stack([image.tensor for image in decoded])
        batches = [inputs[k:k + args.batch_size] for k in range(0, len(inputs), args.batch_size)]
        compute = compute_only(backend, stages.explain.outputs, batches, args.method)
        e2e = end_to_end(manifest_path)
        print(f"this machine: onnxcam run {e2e:.1f} images/s after start-up, compute only {compute:.1f} images/s "
              f"(batch {args.batch_size}): end to end is {100 * e2e / compute:.0f}% of compute only")


if __name__ == "__main__":
    main()
