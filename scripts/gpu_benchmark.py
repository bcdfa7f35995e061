"""GPU throughput in one shot (`make bench-gpu`): the GPU and the provider actually used, GPU-vs-CPU parity,
compute-only and end-to-end images/s of the float graph and of the served graph (Grad-CAM in the graph, uint8
input) at two batch sizes, and pytorch-grad-cam on the same GPU, images and batch where it is installed. A
script, not a test; it makes its own JPEGs and needs no network.

    python scripts/gpu_benchmark.py --model exports/resnet50.onnx [--images 4096] [--batches 64,256]
                                    [--size 500x375] [--workers 16] [--worker-processes] [--device cuda]
                                    [--json results.json]

--model is a float explain graph (`onnxcam export --model torchvision:resnet50`, exported wherever torch and
torchvision are); the served variant is converted from it here (`onnxcam convert --maps gradcam --uint8-input`).
With --device cuda (the default) the run stops, saying why, when ONNX Runtime does not run the graph on CUDA;
--device cpu runs the same measurements on the CPU (a check of the script on a machine without a GPU). FP16
graphs are not measured: onnxcam exports no half-precision graph yet.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from onnxcam.exporter.serving import convert
from onnxcam.runner.inputs.preprocess import normalised, to_input
from onnxcam.runner.methods import METHODS
from onnxcam.runner.model.backend import ModelError, OnnxRuntimeBackend
from onnxcam.runner.model.graph import map_output, read_graph_info

RAW = ("logits", "activations", "gradients")


def jpegs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """Photograph-like JPEGs (smooth colour fields with edges), `count` of them, 16 distinct."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, paths, sources = np.random.default_rng(0), [], []
    for _ in range(16):
        field = cv2.resize(rng.integers(0, 256, (12, 16, 3), np.uint8), size, interpolation=cv2.INTER_CUBIC)
        cv2.circle(field, (int(rng.integers(size[0])), int(rng.integers(size[1]))), size[1] // 4, (255, 255, 255), -1)
        sources.append(cv2.imencode(".jpg", field, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    for i in range(count):
        paths.append(folder / f"{i:06d}.jpg")
        paths[-1].write_bytes(sources[i % 16])
    return paths


def gpu_name() -> str:
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
        return found.stdout.strip().splitlines()[0] if found.returncode == 0 else "no GPU (nvidia-smi failed)"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "no GPU (no nvidia-smi)"


def compute_only(backend: OnnxRuntimeBackend, batch: np.ndarray, served: bool, repeats: int) -> float:
    """Batches in memory -> Grad-CAM maps in host memory; images/s."""
    outputs = ("logits", map_output("gradcam")) if served else RAW
    targets = np.full(len(batch), -1)
    backend.run(outputs, batch, targets)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        out = backend.run(outputs, batch, targets)
        if not served:
            METHODS["gradcam"](out, METHODS["gradcam"].defaults)
    return repeats * len(batch) / (time.perf_counter() - start)


def end_to_end(graph: Path, images: Path, out: Path, batch: int, workers: int, processes: bool, device: str
               ) -> tuple[float, str]:
    """`onnxcam run` in its own process: JPEGs -> Grad-CAM overlays (and thumbnails) written; images/s, provider."""
    manifest = out.with_suffix(".yaml")
    manifest.write_text(yaml.safe_dump({
        "model": str(graph), "images": {"root": str(images)}, "methods": ["gradcam"],
        "output": {"dir": str(out), "heatmaps": "none", "overlays": {"format": "jpg", "quality": 90}},
        "runtime": {"providers": [device], "batch_size": batch, "workers": workers, "worker_processes": processes,
                    "memory_budget": "8GB"}}))
    subprocess.run([sys.executable, "-m", "onnxcam.runner.cli", "run", str(manifest), "--quiet"], check=True,
                   capture_output=True)
    report = json.loads((out / "run.json").read_text())
    return report["images"] / report["wall_s"], report["provider"]


def reference_rows(info, paths: list[Path], batches: list[int], device: str, out: Path) -> list[dict]:
    """pytorch-grad-cam end to end on the same JPEGs and batch sizes (its usual loop, `make bench`'s), with the
    torchvision model the graph was exported from; skipped, saying why, where torch, torchvision or grad-cam is
    missing."""
    try:
        import torch
        from benchmark import grad_cam_end_to_end
        from onnxcam.exporter.sources import load_model
    except ImportError as error:
        print(f"pytorch-grad-cam: not measured ({error}; pip install -e '.[export,test]')")
        return []
    model = load_model(info.model).model.to(device).requires_grad_(False)
    rows = []
    for batch in batches:
        rate = grad_cam_end_to_end(model, model.get_submodule(info.target_layer), paths, info.preprocessing, batch,
                                   device, out)
        rows.append({"batch": batch, "end_to_end": rate, "torch": torch.__version__})
        print(f"{'pytorch-grad-cam, parameters frozen':<34} {batch:>5} {'':>14} {rate:>10.0f}/s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a float explain graph (ResNet-50 for the goals)")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--size", default="500x375")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--worker-processes", action="store_true",
                        help="end to end: read and write in worker processes (runtime.worker_processes: true)")
    parser.add_argument("--repeats", type=int, default=20, help="compute-only batches per figure")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.model = args.model.resolve()  # the manifests live in a temporary folder
    batches = [int(b) for b in args.batches.split(",")]
    size = tuple(int(v) for v in args.size.split("x"))
    figures: dict[str, object] = {"gpu": gpu_name(), "device": args.device, "workers": args.workers,
                                  "worker_processes": args.worker_processes}
    print(f"GPU: {figures['gpu']}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        served = tmp / "served.onnx"
        convert(args.model, served, ["gradcam"], uint8=True)
        try:
            backends = {name: OnnxRuntimeBackend(graph, [args.device], [outputs]) for name, graph, outputs in (
                ("float", args.model, RAW), ("served", served, ("logits", map_output("gradcam"))))}
        except ModelError as error:
            sys.exit(f"gpu_benchmark: {args.device} was asked for and cannot run: {error}")
        provider = backends["float"].provider
        figures["provider"] = provider
        print(f"provider: {provider}")
        if args.device == "cuda" and provider != "CUDAExecutionProvider":
            sys.exit(f"gpu_benchmark: CUDA was asked for and {provider} runs the model; `onnxcam doctor` says why")
        info = read_graph_info(args.model)
        paths = jpegs(tmp / "images", args.images, size)
        pixels = np.stack([to_input(cv2.imread(str(p)), info.preprocessing, uint8=True)[0] for p in paths[:16]])
        floats = normalised(pixels, info.preprocessing)
        targets = np.full(len(pixels), -1)
        cpu = OnnxRuntimeBackend(args.model, ["cpu"]).run(RAW, floats, targets)
        on_device = backends["float"].run(RAW, floats, targets)
        maps = backends["served"].run(("logits", map_output("gradcam")), pixels, targets)[map_output("gradcam")]
        reference = METHODS["gradcam"](cpu, METHODS["gradcam"].defaults)
        parity = {name: float(np.abs(on_device[name] - cpu[name]).max() / np.abs(cpu[name]).max()) for name in RAW}
        parity["map_gradcam (served graph)"] = float(np.abs(maps - reference).max() / np.abs(reference).max())
        figures["parity"] = parity
        print("parity vs the CPU provider (max |difference| / max |value|): "
              + ", ".join(f"{name} {value:.1e}" for name, value in parity.items()))
        print(f"{'graph':<34} {'batch':>5} {'compute only':>14} {'end to end':>12}")
        rows = []
        for name, label in (("float", "float32, maps on the host"), ("served", "float32, Grad-CAM in the graph")):
            graph = args.model if name == "float" else served
            for batch in batches:
                inputs = np.resize(pixels if name == "served" else floats,
                                   (batch, *(pixels if name == "served" else floats).shape[1:]))
                compute = compute_only(backends[name], inputs, name == "served", args.repeats)
                e2e, used = end_to_end(graph, tmp / "images", tmp / f"out-{name}-{batch}", batch, args.workers,
                                       args.worker_processes, args.device)
                rows.append({"graph": label, "batch": batch, "compute_only": compute, "end_to_end": e2e,
                             "provider": used})
                print(f"{label:<34} {batch:>5} {compute:>12.0f}/s {e2e:>10.0f}/s")
        figures["rows"] = rows
        figures["pytorch_grad_cam"] = reference_rows(info, paths, batches, args.device, tmp / "reference")
        print("float16: not measured (onnxcam exports no half-precision graph yet)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
