"""Peer benchmark (`make bench-peer`): onnxcam against OpenVINO XAI on a CPU, the same model, JPEGs and overlays.

    python benchmarks/peer_benchmark.py --ovxai-python .venv-ovxai/bin/python [--model torchvision:resnet50]
                                        [--images 160] [--batch-size 16] [--workers 4] [--smoke]

One invocation, the same JPEGs (scikit-image's photographs at 500x375), each configuration end to end (JPEG read ->
overlay JPEG written) in a process of its own, one run each:
  - onnxcam, ONNX Runtime f32: `onnxcam run` with runtime.providers [cpu], Grad-CAM;
  - onnxcam, OpenVINO f32 and bf16: runtime.backend openvino, runtime.precision f32 / bf16 (bf16 only where the
    CPU has it natively);
  - OpenVINO XAI 1.1, ReciproCAM, at its default precision and forced to f32: benchmarks/_ovxai_reciprocam.py, run with
    the Python of its own environment (`make bench-peer` makes .venv-ovxai: its pins clash with onnxcam's), on the
    classifier as a user hands it to OpenVINO (the same weights exported to ONNX by torch.onnx).
Images/s count from the first image to the last overlay written; the rest of each process's time is listed apart as
start-up (loading, compiling; for onnxcam also writing report.html at the end). Then
onnxcam's compute-only throughput (preprocessed batches -> Grad-CAM maps at input size) for each runtime, and the
goals: onnxcam's fastest >= 1.2x OpenVINO XAI's fastest; onnxcam ahead at each precision both ran; onnxcam's bf16 end
to end >= 85% of its bf16 compute only. It prints a Markdown table (README's "Peers on a CPU server").
Without --ovxai-python's environment (.venv-ovxai, which `make test` does not build) the smoke run measures onnxcam's
side alone and says that OpenVINO XAI was skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import openvino as ov
import torch
import yaml
from _common import (
    MAIN_OUTPUTS,
    ROOT,
    SMOKE_INPUT_SIZE,
    SMOKE_MODEL,
    compute_only,
    exported,
    measured_run,
    parse,
    write_sized,
)
from onnxcam.runner.inputs.preprocess import to_input
from onnxcam.runner.model.graph import read_graph_info
from onnxcam.runner.model.openvino_backend import available_cores, native_bf16
from onnxcam.runner.model.registry import open_backend

PHOTO_SIZE = (500, 375)  # width, height
GOAL_FASTEST, GOAL_PIPELINE = 1.2, 0.85



@dataclasses.dataclass
class Result:
    name: str
    precision: str
    end_to_end: float  # images/s after start-up
    startup_s: float
    peak_mib: float
    compute: float | None = None  # onnxcam only: compute-only images/s

    @property
    def label(self) -> str:
        return f"{self.name}, {self.precision}"


def plain_onnx(loaded, graph: Path) -> Path:
    """The classifier alone, exported by torch.onnx as a user would before handing it to OpenVINO (XAI)."""
    path = graph.with_name(f"{graph.stem}-plain.onnx")
    if not path.exists():
        height, width = read_graph_info(graph).preprocessing.size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(loaded.model.eval(), (torch.zeros(1, 3, height, width),), str(path),
                              input_names=["input"], output_names=["logits"], dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def onnxcam_run(name: str, graph: Path, images: Path, out: Path, runtime: dict) -> Result:
    manifest = out.parent / f"{out.name}.yaml"
    manifest.write_text(yaml.safe_dump({
        "model": str(graph), "images": {"root": str(images)}, "methods": ["gradcam"],
        "output": {"dir": str(out), "heatmaps": "none", "thumbnails": False,
                   "overlays": {"format": "jpg", "quality": 90}},
        "runtime": runtime}))
    start = time.perf_counter()
    peak = measured_run(manifest)
    total = time.perf_counter() - start
    report = json.loads((out / "run.json").read_text())
    return Result(name, report["precision"], report["images"] / report["wall_s"], total - report["wall_s"], peak)


def ovxai_run(name: str, python: str, plain: Path, recipe: Path, images: Path, out: Path, *flags: str) -> Result:
    done = subprocess.run([python, str(ROOT / "benchmarks" / "_ovxai_reciprocam.py"), str(plain), str(recipe),
                           str(images), str(out), *flags], capture_output=True, text=True, check=True,
                          env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"})
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return Result(f"{name} (OpenVINO {figures['openvino']})", figures["precision"],
                  figures["images"] / figures["seconds"], figures["startup_s"], figures["peak_rss_mib"])


def goals(ours: list[Result], theirs: list[Result]) -> list[str]:
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    fastest, peer = max(ours, key=lambda r: r.end_to_end), max(theirs, key=lambda r: r.end_to_end)
    ratio = fastest.end_to_end / peer.end_to_end
    lines = [f"onnxcam's fastest ({fastest.label}) is {ratio:.2f}x OpenVINO XAI's fastest ({peer.label}): goal >= "
             f"{GOAL_FASTEST}x {met(ratio >= GOAL_FASTEST)}"]
    for precision in sorted({r.precision for r in ours} & {r.precision for r in theirs}):
        best = max((r for r in ours if r.precision == precision), key=lambda r: r.end_to_end)
        other = max((r for r in theirs if r.precision == precision), key=lambda r: r.end_to_end)
        lines.append(f"{precision}: onnxcam {best.end_to_end:.1f} vs OpenVINO XAI {other.end_to_end:.1f} images/s: "
                     f"onnxcam ahead {met(best.end_to_end > other.end_to_end)}")
    for result in ours:
        if result.precision == "bf16" and result.compute:
            share = result.end_to_end / result.compute
            lines.append(f"{result.label}: end to end is {share:.0%} of its compute only: goal >= {GOAL_PIPELINE:.0%} "
                         f"{met(share >= GOAL_PIPELINE)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ovxai-python", type=Path, default=ROOT / ".venv-ovxai" / "bin" / "python",
                        help="the Python of OpenVINO XAI's environment (default .venv-ovxai's)")
    parser.add_argument("--model", default="torchvision:resnet50")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    args = parse(parser, model=SMOKE_MODEL, images=4, batch_size=2, workers=1)
    peer = args.ovxai_python.is_file()
    if not peer and not args.smoke:
        sys.exit(f"peer_benchmark: no Python at {args.ovxai_python}; `make bench-peer` makes OpenVINO XAI's "
                 "environment (.venv-ovxai)")
    with tempfile.TemporaryDirectory() as tmp:
        measure(args, Path(tmp), peer)


def measure(args: argparse.Namespace, tmp: Path, peer: bool) -> None:
    """Every configuration on the same JPEGs, under `tmp`; OpenVINO XAI's only where its environment is (`peer`)."""
    loaded, graph = exported(args.model, tmp if args.smoke else ROOT / "exports",
                             SMOKE_INPUT_SIZE if args.smoke else None)
    plain = plain_onnx(loaded, graph)
    info = read_graph_info(graph)
    bf16 = native_bf16(ov.Core())
    precisions = ["f32", "bf16"] if bf16 else ["f32"]
    print(f"model {args.model} (layer {info.target_layer}), {args.images} JPEGs of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, "
          f"Grad-CAM and ReciproCAM of the top-1 class, overlays written, batch {args.batch_size}, "
          f"{args.workers} read/write threads, {available_cores()} cores, native bf16: {'yes' if bf16 else 'no'}")
    images = write_sized(tmp, args.images, PHOTO_SIZE, quality=95)
    recipe = tmp / "preprocessing.json"
    recipe.write_text(json.dumps(dataclasses.asdict(info.preprocessing)))
    runtime = {"batch_size": args.batch_size, "workers": args.workers}
    ours = [onnxcam_run(f"onnxcam, ONNX Runtime {ort.__version__}", graph, images, tmp / "ort",
                        {**runtime, "providers": ["cpu"]})]
    ours += [onnxcam_run(f"onnxcam, OpenVINO {ov.get_version().split('-')[0]}", graph, images, tmp / f"ov-{p}",
                         {**runtime, "backend": "openvino", "precision": p}) for p in precisions]
    theirs = []
    if peer:
        theirs = [ovxai_run("OpenVINO XAI 1.1 ReciproCAM, its defaults", str(args.ovxai_python), plain, recipe,
                            images, tmp / "ovxai"),
                  ovxai_run("OpenVINO XAI 1.1 ReciproCAM, forced to f32", str(args.ovxai_python), plain, recipe,
                            images, tmp / "ovxai-f32", "--f32")]
    paths = sorted(images.glob("*.jpg"))
    inputs = np.stack([to_input(cv2.imread(str(path)), info.preprocessing)[0] for path in paths])
    batches = [inputs[i:i + args.batch_size] for i in range(0, len(inputs), args.batch_size)]
    backends = [open_backend(graph, providers=["cpu"], output_sets=[MAIN_OUTPUTS])]
    backends += [open_backend(graph, "openvino", output_sets=[MAIN_OUTPUTS], precision=p, workers=args.workers)
                 for p in precisions]
    for result, backend in zip(ours, backends, strict=True):
        result.compute = compute_only(backend, MAIN_OUTPUTS, batches, "gradcam", at_input_size=True)
    print("\n| | precision | end to end | start-up | compute only | peak RSS |\n| --- | --- | --- | --- | --- | --- |")
    for r in ours + theirs:
        compute = f"{r.compute:.1f} images/s" if r.compute else ""
        print(f"| {r.name} | {r.precision} | {r.end_to_end:.1f} images/s | {r.startup_s:.1f} s | {compute} | "
              f"{r.peak_mib:.0f} MiB |")
    if peer:
        print("\n" + "\n".join(goals(ours, theirs)))
    else:
        print(f"\nOpenVINO XAI skipped: no Python at {args.ovxai_python} (`make bench-peer` makes its environment, "
              ".venv-ovxai); onnxcam's side alone, and no goals")


if __name__ == "__main__":
    main()
