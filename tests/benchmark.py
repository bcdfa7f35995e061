"""Benchmark (`make bench`): onnxcam vs pytorch-grad-cam, side by side, same model, images and batch size.

    python tests/benchmark.py [--model torchvision:resnet50] [--images 128] [--batch-size 16] [--method gradcam]

End to end = read JPEG -> overlay JPEG written. onnxcam runs its CLI pipeline in a subprocess (so its peak
RSS is its own); pytorch-grad-cam runs the usual loop: decode, preprocess, GradCAM, show_cam_on_image,
imwrite. Compute only = preprocessed batches -> maps at input size. pytorch-grad-cam is measured on
the model as users load it (parameters require grad, so backward also computes every weight gradient)
and with its parameters frozen. On a machine with CUDA, both also run on the GPU.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from onnxcam.exporter.export import export_explain_graph
from onnxcam.exporter.sources import load_model
from onnxcam.runner.explain_graph import read_graph_info
from onnxcam.runner.methods import METHODS, normalise, resize_maps
from onnxcam.runner.preprocess import to_input
from onnxcam.runner.session import ExplainSession
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from sample_photos import write_photos

ROOT = Path(__file__).resolve().parent.parent


def dataset(folder: Path, count: int) -> list[Path]:
    photos = write_photos(folder / "photos")
    paths = []
    for i in range(count):
        path = folder / "images" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photos[i % len(photos)].read_bytes())
        paths.append(path)
    return paths


def onnxcam_end_to_end(graph: Path, images: Path, out: Path, batch: int, workers: int, providers, method: str):
    manifest = out.parent / f"{out.name}.yaml"
    manifest.write_text(yaml.safe_dump({
        "model": str(graph), "images": {"root": str(images)}, "methods": [method],
        "output": {"dir": str(out), "heatmaps": "none", "overlays": {"format": "jpg", "quality": 90}},
        "runtime": {"providers": providers, "batch_size": batch, "workers": workers}}))
    code = ("import re, sys; from onnxcam.runner.cli import main; rc = main(['run', sys.argv[1], '--quiet']); "
            "print('VmHWM', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, str(manifest)], capture_output=True, text=True, check=True)
    report = json.loads((out / "run.json").read_text())
    peak = int(re.search(r"VmHWM (\d+)", done.stdout).group(1)) / 1024
    return report["images"] / report["wall_s"], peak, report["provider"]


def grad_cam_end_to_end(model, layer, paths: list[Path], pre, batch: int, device: str, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for first in range(0, len(paths), batch):
            chunk = paths[first:first + batch]
            pictures = [cv2.imread(str(p)) for p in chunk]
            tensor = torch.from_numpy(np.stack([to_input(p, pre)[0] for p in pictures])).to(device)
            maps = cam(input_tensor=tensor.requires_grad_(), targets=None)
            for path, picture, grey in zip(chunk, pictures, maps, strict=True):
                rgb = picture[:, :, ::-1].astype(np.float32) / 255
                grey = cv2.resize(grey, (picture.shape[1], picture.shape[0]))
                overlay = show_cam_on_image(rgb, grey, use_rgb=True)
                cv2.imwrite(str(out / f"{path.name}.gradcam.jpg"), overlay[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if device == "cuda":
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


def onnxcam_compute(session: ExplainSession, batches: list[np.ndarray], method: str) -> float:
    session.run(batches[0], np.full(len(batches[0]), -1))  # warm-up
    start = time.perf_counter()
    for x in batches:
        out = session.run(x, np.full(len(x), -1))
        normalise(resize_maps(METHODS[method](out, METHODS[method].options), x.shape[2:]))
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def grad_cam_compute(model, layer, batches: list[np.ndarray], device: str) -> float:
    with GradCAM(model=model, target_layers=[layer]) as cam:
        cam(input_tensor=torch.from_numpy(batches[0]).to(device).requires_grad_(), targets=None)  # warm-up
        start = time.perf_counter()
        for x in batches:
            cam(input_tensor=torch.from_numpy(x).to(device).requires_grad_(), targets=None)
        if device == "cuda":
            torch.cuda.synchronize()
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet50")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--method", default="gradcam", choices=["gradcam"])
    args = parser.parse_args()

    torch.manual_seed(0)
    loaded = load_model(args.model)
    graph = ROOT / "exports" / f"bench-{args.model.replace(':', '-')}.onnx"
    if not graph.exists():
        export_explain_graph(loaded, "auto", graph, guided=False, log=lambda _: None)
    info = read_graph_info(graph)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"model {args.model}, layer {info.target_layer}, {args.images} JPEG photos, batch {args.batch_size}, "
          f"method {args.method}, torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = dataset(tmp, args.images)
        inputs = np.stack([to_input(cv2.imread(str(p)), info.preprocessing)[0] for p in paths])
        batches = [inputs[i:i + args.batch_size] for i in range(0, len(inputs), args.batch_size)]
        for device in devices:
            providers = ["cuda"] if device == "cuda" else ["cpu"]
            ours, peak, provider = onnxcam_end_to_end(graph, tmp / "images", tmp / f"out-{device}",
                                                      args.batch_size, args.workers, providers, args.method)
            session = ExplainSession(graph, ["logits", "activations", "gradients"], providers)
            ours_compute = onnxcam_compute(session, batches, args.method)
            model = load_model(args.model).model.to(device)
            model.load_state_dict(loaded.model.state_dict())
            reference = {}
            for label, trainable in (("as loaded", True), ("frozen", False)):
                model.requires_grad_(trainable)
                reference[label] = (
                    grad_cam_end_to_end(model, model.get_submodule(info.target_layer), paths, info.preprocessing,
                                        args.batch_size, device, tmp / f"ref-{device}"),
                    grad_cam_compute(model, model.get_submodule(info.target_layer), batches, device))
            print(f"\n[{device}] onnxcam on {provider}, peak RSS {peak:.0f} MiB (its own process)")
            print(f"  {'':38} {'end to end':>12} {'compute only':>14}")
            print(f"  {'onnxcam':38} {ours:9.1f}/s {ours_compute:11.1f}/s")
            for label, (end_to_end, compute) in reference.items():
                print(f"  {'pytorch-grad-cam, parameters ' + label:38} {end_to_end:9.1f}/s {compute:11.1f}/s"
                      f"   onnxcam is {ours / end_to_end:.1f}x / {ours_compute / compute:.1f}x")


if __name__ == "__main__":
    main()
