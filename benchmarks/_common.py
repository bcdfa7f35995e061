"""What the benchmarks share (not a benchmark): the measured `onnxcam run` in its own process, compute-only
throughput, the exported graphs and the JPEG datasets, and `--smoke`, the tiny size at which `make test-fast` runs
every benchmark so that none rots.

Importing it puts tools/ (scikit-image's photographs: sample_photos, shared with the demo and the tests) and tests/
(the reference libraries' view of a model: reference_model; finding Chromium: chromium; the seeded toy models:
toy_models) on sys.path, so a benchmark imports this module before those.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[1:1] = [str(ROOT / "tools"), str(ROOT / "tests")]

from onnxcam.runner.methods import METHODS  # noqa: E402
from onnxcam.runner.methods.maps import normalise, resize_maps  # noqa: E402
from onnxcam.runner.model.backend import Backend  # noqa: E402
from onnxcam.runner.model.graph import map_output  # noqa: E402
from sample_photos import write_photos  # noqa: E402

MAIN_OUTPUTS = ("logits", "activations", "gradients")
# --smoke's model: a seeded toy (tests/toy_models.py) at a small input size, exported in a second or two
SMOKE_MODEL, SMOKE_INPUT_SIZE = "toy_models:relu_net", (64, 64)
# `onnxcam run` in a fresh process (so its peak RSS is its own), then its peak RSS on the last line.
RUN = ("import re, sys; from onnxcam.runner.cli import main; rc = main(['run', sys.argv[1], '--quiet']); "
       "print('VmHWM', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(rc)")


def parse(parser: argparse.ArgumentParser, **smoke) -> argparse.Namespace:
    """The arguments; with --smoke, `smoke`'s values replace the defaults (flags given still win): a run of a few
    seconds over a few images, through the same code, printing the same figures."""
    sizes = ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in smoke.items() if value is not None)
    parser.add_argument("--smoke", action="store_true",
                        help=f"a few seconds' run (make test-fast runs it): {sizes}, a seeded toy model")
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--smoke", action="store_true")
    if early.parse_known_args()[0].smoke:
        parser.set_defaults(**smoke)
    return parser.parse_args()


def peak_mib(output: str) -> float:
    """The peak RSS that RUN printed, in MiB."""
    return int(re.search(r"VmHWM (\d+)", output).group(1)) / 1024


def measured_run(manifest: Path, python: str = sys.executable) -> float:
    """`onnxcam run MANIFEST --quiet` with `python`, in its own process; its peak RSS in MiB. Exits, with the run's
    output, when it fails."""
    done = subprocess.run([python, "-c", RUN, str(manifest)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{Path(sys.argv[0]).stem}: onnxcam run {manifest} failed ({done.returncode}):\n"
                 f"{done.stdout}{done.stderr}")
    return peak_mib(done.stdout)


def compute_only(backend: Backend, outputs: tuple[str, ...], batches: list[np.ndarray], method: str,
                 at_input_size: bool = False) -> float:
    """Preprocessed batches in memory -> the method's maps in host memory (computed there unless the graph does,
    `map_<method>` among `outputs`; `at_input_size`: resized to the input and normalised, as pytorch-grad-cam hands
    them back); images/s. The first batch runs once before the clock starts (ONNX Runtime's first run, CUDA's
    convolution search)."""
    on_host = map_output(method) not in outputs
    backend.run(outputs, batches[0], np.full(len(batches[0]), -1))
    start = time.perf_counter()
    for batch in batches:
        out = backend.run(outputs, batch, np.full(len(batch), -1))
        if on_host:
            maps = METHODS[method](out, METHODS[method].defaults)
            if at_input_size:
                normalise(resize_maps(maps, batch.shape[2:]))
    return sum(len(batch) for batch in batches) / (time.perf_counter() - start)


def exported(spec: str, folder: Path, input_size: tuple[int, int] | None = None, **options) -> tuple[object, Path]:
    """The model `spec` (seeded) and its explain graph in `folder` (kept there: exported once per folder), at its
    recipe's input size unless given (height, width), without guided backprop unless `options` ask for it."""
    import torch  # here, not above: gpu_benchmark runs where only ONNX Runtime is installed
    from onnxcam.exporter.export import export_explain_graph
    from onnxcam.exporter.sources import load_model

    torch.manual_seed(0)
    loaded = load_model(spec)
    loaded.input_size = input_size or loaded.input_size
    switched = "".join(f"-{key}" for key, on in sorted(options.items()) if on)
    size = f"-{input_size[0]}x{input_size[1]}" if input_size else ""
    graph = folder / f"bench-{spec.replace(':', '-')}{size}{switched}.onnx"
    if not graph.exists():
        folder.mkdir(parents=True, exist_ok=True)
        export_explain_graph(loaded, "auto", graph, log=lambda _: None, **({"guided": False} | options))
    return loaded, graph


def smoke_graph(folder: Path) -> Path:
    """--smoke's explain graph in `folder`: SMOKE_MODEL with every output a run can ask for (guided backprop, the
    saliency family), for the benchmarks that are handed a graph (`--model FILE`)."""
    return exported(SMOKE_MODEL, folder, SMOKE_INPUT_SIZE, guided=True, saliency=True)[1]


def dataset(folder: Path, count: int) -> list[Path]:
    """`count` JPEGs in folder/images: scikit-image's photographs in turn, at their own sizes."""
    photos = write_photos(folder / "photos")
    paths = []
    for i in range(count):
        path = folder / "images" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photos[i % len(photos)].read_bytes())
        paths.append(path)
    return paths


def write_sized(folder: Path, count: int, size: tuple[int, int], quality: int = 90) -> Path:
    """`count` JPEGs of `size` (width, height), scikit-image's photographs in turn, into folder/images."""
    sources = [cv2.imread(str(path)) for path in write_photos(folder / "sources")]
    images = folder / "images"
    images.mkdir(parents=True)
    for i in range(count):
        picture = cv2.resize(sources[i % len(sources)], size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(images / f"{i:05d}.jpg"), picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return images
