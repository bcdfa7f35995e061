"""GPU throughput in one shot (`make bench-gpu`): the GPU and the provider actually used, GPU-vs-CPU parity,
float16 against float32, compute-only and end-to-end images/s of float32 and float16 graphs with the maps on the
host or in the graph (uint8 input) at two batch sizes, and pytorch-grad-cam on the same GPU, images and batches. A
script, not a test; it makes its own JPEGs and needs no network.

    python benchmarks/gpu_benchmark.py --model exports/resnet50.onnx --fp16-model exports/resnet50-fp16.onnx
                                       [--images 8192] [--batches 64,256] [--size 500x375] [--workers 16]
                                       [--device cuda] [--json results.json] [--smoke]

--model and --fp16-model are float-input explain graphs (`onnxcam export --model torchvision:resnet50 [--fp16]`,
exported wherever torch and torchvision are); the served variants (Grad-CAM in the graph, uint8 input) are
converted from them here. With --device cuda (the default) the run stops, saying why, when ONNX Runtime does not
run a graph on CUDA; --device cpu runs the same measurements on the CPU (a check of the script without a GPU), as
--smoke does, on a toy model's float32 graph that it exports itself.
End to end is `onnxcam run` in its own process (JPEGs -> Grad-CAM overlays and thumbnails written) with the read
and write stages in --workers processes, and once with threads for comparison, over the whole run and after its
start-up (`end_to_end`). The figures are written to --json after each section, so a run cut short keeps what it
measured.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import yaml
from _common import MAIN_OUTPUTS, SMOKE_INPUT_SIZE, SMOKE_MODEL, compute_only, exported, measured_run, parse
from onnxcam.exporter.parity import cosine, max_error
from onnxcam.exporter.serving import convert
from onnxcam.runner.inputs.preprocess import normalised, to_input
from onnxcam.runner.methods import METHODS
from onnxcam.runner.model.backend import ModelError, OnnxRuntimeBackend
from onnxcam.runner.model.graph import map_output, read_graph_info

SERVED = ("logits", map_output("gradcam"))


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


def gradcam(outputs: dict[str, np.ndarray]) -> np.ndarray:
    return METHODS["gradcam"](outputs, METHODS["gradcam"].defaults)


def onnxcam_run(graph: Path, images: Path, out: Path, batch: int, workers: int, device: str, processes: bool
                ) -> tuple[int, float, str]:
    """`onnxcam run` in its own process: JPEGs -> Grad-CAM overlays (and thumbnails) written; (images, the run's wall
    seconds, the provider it used). Its outputs are deleted afterwards."""
    manifest = out.with_suffix(".yaml")
    manifest.write_text(yaml.safe_dump({
        "model": str(graph), "images": {"root": str(images)}, "methods": ["gradcam"],
        "output": {"dir": str(out), "heatmaps": "none", "overlays": {"format": "jpg", "quality": 90}},
        "runtime": {"providers": [device], "batch_size": batch, "workers": workers, "worker_processes": processes,
                    "memory_budget": "16GB"}}))
    measured_run(manifest)
    report = json.loads((out / "run.json").read_text())
    shutil.rmtree(out)
    return report["images"], report["wall_s"], report["provider"]


def end_to_end(graph: Path, images: Path, out: Path, batch: int, workers: int, device: str, processes: bool
               ) -> dict[str, object]:
    """images/s of a run over every JPEG (wall time, start-up included), and after start-up: a second run over one
    batch of them gives the start-up (processes, sessions, the first batch's convolution search), and the rest
    of the images over the rest of the time is the rate a long run settles at."""
    count, wall, provider = onnxcam_run(graph, images, out, batch, workers, device, processes)
    first = images.parent / f"{images.name}-{batch}"
    if not first.exists():
        first.mkdir()
        for path in sorted(images.iterdir())[:batch]:
            (first / path.name).hardlink_to(path)
    _, startup, _ = onnxcam_run(graph, first, out, batch, workers, device, processes)
    return {"end_to_end": count / wall, "after_startup": (count - batch) / max(wall - startup, 1e-9),
            "startup_s": startup, "images": count, "provider": provider,
            "workers": f"{workers} {'processes' if processes else 'threads'}"}


def _stand_in(name: str) -> type:
    """What an absent package's module hands `from package import name`: an empty class (dunder names stay
    missing, as inspect and importlib expect of a module)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {})


class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for packages that pytorch_grad_cam imports at its top for methods this benchmark never runs
    (scikit-learn's KernelPCA, matplotlib, scipy), on a GPU server that lacks them; GradCAM never calls them."""

    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self, is_package=True) if name.split(".")[0] in self.roots \
            else None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _stand_in
        return module

    def exec_module(self, module):
        pass


def reference_rows(info, paths: list[Path], floats: np.ndarray, batches: list[int], device: str, out: Path,
                   repeats: int) -> tuple[list[dict], str]:
    """pytorch-grad-cam's GradCAM, end to end and compute only, on the same JPEGs and batch sizes, with the
    torchvision model the graph was exported from (its own random initialisation, as the graph's: the weights do
    not change the speed); ([], why) where torch, torchvision or pytorch-grad-cam is missing."""
    absent = {root for root in ("sklearn", "matplotlib", "scipy") if importlib.util.find_spec(root) is None}
    if absent:
        sys.meta_path.append(_Absent(absent))
    try:
        import torch
        from _grad_cam_loops import grad_cam_compute, grad_cam_end_to_end
        from onnxcam.exporter.sources import load_model
    except ImportError as error:
        return [], f"not measured ({error}; pip install -e '.[export,test]')"
    torch.backends.cudnn.benchmark = True
    model = load_model(info.model).model.to(device).requires_grad_(False)
    layer = model.get_submodule(info.target_layer)
    rows = []
    for batch in batches:
        inputs = [np.resize(floats, (batch, *floats.shape[1:]))] * repeats
        compute = grad_cam_compute(model, layer, inputs, device)
        rate = grad_cam_end_to_end(model, layer, paths, info.preprocessing, batch, device, out / str(batch))
        rows.append({"batch": batch, "compute_only": compute, "end_to_end": rate, "images": len(paths)})
        print(f"{'pytorch-grad-cam (float32, frozen)':<38} {batch:>5} {compute:>12.0f}/s {rate:>10.0f}/s")
    note = f"torch {torch.__version__}" + (f"; stand-ins for {', '.join(sorted(absent))}" if absent else "")
    return rows, note


def agreement(half: dict[str, np.ndarray], full: dict[str, np.ndarray]) -> dict[str, float]:
    """float16 vs float32 on the same images: the smallest cosine of their Grad-CAM maps, and the share of images
    whose map peaks at the same position and whose top-1 class is the same."""
    a, b = gradcam(half), gradcam(full)
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return {"min_cosine": min(map(cosine, flat_a, flat_b)),
            "same_peak": float((flat_a.argmax(1) == flat_b.argmax(1)).mean()),
            "same_top1": float((half["logits"].argmax(1) == full["logits"].argmax(1)).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a float32 explain graph (ResNet-50 for the goals)")
    parser.add_argument("--fp16-model", type=Path, help="the same model exported with --fp16")
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--reference-images", type=int, default=512, help="pytorch-grad-cam's end to end")
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--size", default="500x375")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 2),
                        help="worker processes (default: the cores less two, for the run's process and the GPU's)")
    parser.add_argument("--repeats", type=int, default=20, help="compute-only batches per figure")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parse(parser, images=8, reference_images=4, batches="2", size="160x120", workers=1, repeats=2,
                 device="cpu")
    if not args.model and not args.smoke:
        parser.error("--model is required (or --smoke)")
    batches = [int(b) for b in args.batches.split(",")]
    size = tuple(int(v) for v in args.size.split("x"))
    figures: dict[str, object] = {"gpu": gpu_name(), "device": args.device, "onnxruntime": ort.__version__}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))

    print(f"GPU: {figures['gpu']}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.smoke and not args.model:
            print(f"smoke run on the {args.device} provider: {SMOKE_MODEL} at {SMOKE_INPUT_SIZE}, float32 only (a "
                  "float16 graph goes through the same code), a check of this script, not of a GPU")
            args.model = exported(SMOKE_MODEL, tmp, SMOKE_INPUT_SIZE)[1]
        precisions = {"fp32": args.model.resolve(), **({"fp16": args.fp16_model.resolve()} if args.fp16_model else {})}
        graphs = {}  # (precision, maps in the graph) -> graph
        for precision, graph in precisions.items():
            graphs[precision, False] = graph
            graphs[precision, True] = tmp / f"served-{precision}.onnx"
            convert(graph, graphs[precision, True], ["gradcam"], uint8=True)
        try:
            backends = {key: OnnxRuntimeBackend(graph, [args.device], [SERVED if key[1] else MAIN_OUTPUTS])
                        for key, graph in graphs.items()}
        except ModelError as error:
            sys.exit(f"gpu_benchmark: {args.device} was asked for and cannot run: {error}")
        figures["providers"] = {f"{p}{' served' * s}": f"{b.provider} ({b.precision})"
                                for (p, s), b in backends.items()}
        print(f"providers: {figures['providers']}")
        if args.device == "cuda" and any(b.provider != "CUDAExecutionProvider" for b in backends.values()):
            sys.exit("gpu_benchmark: CUDA was asked for and another provider runs a graph; `onnxcam doctor` says why")
        save()

        info = read_graph_info(args.model)
        paths = jpegs(tmp / "images", args.images, size)
        pixels = np.stack([to_input(cv2.imread(str(p)), info.preprocessing, uint8=True)[0] for p in paths[:16]])
        floats = normalised(pixels, info.preprocessing)
        targets = np.full(len(pixels), -1)
        parity, outputs = {}, {}
        for precision, graph in precisions.items():
            cpu = OnnxRuntimeBackend(graph, ["cpu"]).run(MAIN_OUTPUTS, floats, targets)
            outputs[precision] = backends[precision, False].run(MAIN_OUTPUTS, floats, targets)
            for name in MAIN_OUTPUTS:
                parity[f"{precision} {name}"] = max_error(outputs[precision][name], cpu[name])
            maps = backends[precision, True].run(SERVED, pixels, targets)[map_output("gradcam")]
            parity[f"{precision} map_gradcam (served graph)"] = max_error(maps, gradcam(cpu))
        figures["parity_vs_cpu"] = parity
        print("parity vs the CPU provider (max |difference| / max |value|): "
              + ", ".join(f"{name} {value:.1e}" for name, value in parity.items()))
        if "fp16" in outputs:
            figures["fp16_vs_fp32"] = agreement(outputs["fp16"], outputs["fp32"])
            print(f"float16 vs float32 on {args.device}, {len(pixels)} images: {figures['fp16_vs_fp32']}")
        save()

        print(f"{'graph':<38} {'batch':>5} {'compute only':>14} {'end to end':>12} {'after start-up':>14} "
              f"{'start-up':>8}")
        rows = figures["rows"] = []

        def measure(key: tuple[str, bool], batch: int) -> None:
            precision, served = key
            label = f"{precision}, " + ("Grad-CAM in the graph, uint8" if served else "maps on the host")
            source = pixels if served else floats
            compute = compute_only(backends[key], SERVED if served else MAIN_OUTPUTS,
                                   [np.resize(source, (batch, *source.shape[1:]))] * args.repeats, "gradcam")
            e2e = end_to_end(graphs[key], tmp / "images", tmp / "out", batch, args.workers, args.device,
                             processes=True)
            rows.append({"graph": label, "precision": backends[key].precision, "batch": batch,
                         "compute_only": compute, **e2e})
            print(f"{label:<38} {batch:>5} {compute:>12.0f}/s {e2e['end_to_end']:>10.0f}/s "
                  f"{e2e['after_startup']:>10.0f}/s {e2e['startup_s']:>6.1f} s")
            save()

        # the goals' figures first (float16, maps in the graph, and the reference), so a run cut short has them
        order = sorted(graphs, key=lambda key: (key[0] != "fp16", not key[1]))
        best = order[0]
        for key in order[:2]:
            for batch in sorted(batches, reverse=True):
                measure(key, batch)
        figures["pytorch_grad_cam"], figures["pytorch_grad_cam_note"] = reference_rows(
            info, paths[:args.reference_images], floats, batches, args.device, tmp / "reference", args.repeats)
        save()
        for key in order[2:]:
            for batch in sorted(batches, reverse=True):
                measure(key, batch)
        e2e = end_to_end(graphs[best], tmp / "images", tmp / "out", batches[-1], args.workers, args.device,
                         processes=False)
        figures["threads"] = {"graph": f"{best[0]}, served={best[1]}", "batch": batches[-1], **e2e}
        print(f"{'the same, threads instead of processes':<38} {batches[-1]:>5} {'':>14} {e2e['end_to_end']:>10.0f}/s "
              f"{e2e['after_startup']:>10.0f}/s {e2e['startup_s']:>6.1f} s")
        if args.device == "cuda":
            source = pixels if best[1] else floats
            # ONNX Runtime's channels-last convolutions, which the runner does not ask for
            nhwc = OnnxRuntimeBackend(graphs[best], ["cuda"], [SERVED if best[1] else MAIN_OUTPUTS],
                                      cuda_options={"prefer_nhwc": "1"})
            rate = compute_only(nhwc, SERVED if best[1] else MAIN_OUTPUTS,
                                [np.resize(source, (batches[-1], *source.shape[1:]))] * args.repeats, "gradcam")
            figures["prefer_nhwc"] = {"graph": f"{best[0]}, served={best[1]}", "batch": batches[-1],
                                      "compute_only": rate}
            print(f"{'the same, CUDA prefer_nhwc (not in runner)':<38} {batches[-1]:>5} {rate:>12.0f}/s")
        print(f"pytorch-grad-cam: {figures['pytorch_grad_cam_note']}")
        save()


if __name__ == "__main__":
    main()
