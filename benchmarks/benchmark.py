"""Benchmark (`make bench`): onnxcam vs pytorch-grad-cam, side by side, same model, images and batch size.

    python benchmarks/benchmark.py [--part all|gradcam|perturbation|segmentation] [--model torchvision:resnet50]
                                   [--images 128] [--batch-size 16] [--perturbation-model efficientnet-lite0]
                                   [--perturbation-images 4]
                                   [--segmentation-model torchvision:lraspp_mobilenet_v3_large]
                                   [--segmentation-images 32] [--smoke]

End to end = read JPEG -> overlay JPEG written. onnxcam runs its CLI pipeline in a subprocess (so its peak
RSS is its own); pytorch-grad-cam runs the usual loop: decode, preprocess, GradCAM, show_cam_on_image,
imwrite. Compute only = preprocessed batches -> maps at input size. pytorch-grad-cam is measured on
the model as users load it (parameters require grad, so backward also computes every weight gradient)
and with its parameters frozen. On a machine with CUDA, both also run on the GPU.

The perturbation part prints what each perturbation method and each faithfulness metric costs per image in an
onnxcam run (from run.json), then times onnxcam's Score-CAM, average drop + increase in confidence and occlusion
against pytorch-grad-cam's ScoreCAM, DropInConfidence + IncreaseInConfidence and Captum's Occlusion on the same
preprocessed photographs, with the largest difference between the maps.

The segmentation part runs a segmenter end to end, each photograph explained for the class it predicts on most pixels
over those pixels: onnxcam (`targets: top1`, one pass: the mask is built in the graph) against pytorch-grad-cam's
segmentation tutorial loop (a forward pass for the mask, then GradCAM with SemanticSegmentationTarget).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from _common import (
    MAIN_OUTPUTS,
    ROOT,
    SMOKE_INPUT_SIZE,
    SMOKE_MODEL,
    compute_only,
    dataset,
    exported,
    measured_run,
    parse,
)
from _grad_cam_loops import grad_cam_compute, grad_cam_end_to_end
from captum.attr import Occlusion
from onnxcam.exporter.sources import load_model
from onnxcam.runner.evaluate.metrics import Evaluation, MetricRow, Scoring, explanation, score
from onnxcam.runner.inputs.preprocess import to_input
from onnxcam.runner.methods import METHODS
from onnxcam.runner.methods.maps import normalise, resize_maps
from onnxcam.runner.model.backend import OnnxRuntimeBackend
from onnxcam.runner.model.graph import probabilities, read_graph_info
from onnxcam.runner.model.passes import ExtraPasses
from pytorch_grad_cam import ScoreCAM
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from reference_model import reference_model


def onnxcam_end_to_end(graph: Path, images: Path, out: Path, batch: int, workers: int, providers, method: str,
                       **sections):
    manifest = out.parent / f"{out.name}.yaml"
    manifest.write_text(yaml.safe_dump(sections | {
        "model": str(graph), "images": {"root": str(images)}, "methods": [method],
        "output": {"dir": str(out), "heatmaps": "none", "overlays": {"format": "jpg", "quality": 90}},
        "runtime": {"providers": providers, "batch_size": batch, "workers": workers}}))
    peak = measured_run(manifest)
    report = json.loads((out / "run.json").read_text())
    return report["images"] / report["wall_s"], peak, report["provider"]


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def perturbation_costs(graph: Path, images: Path, out: Path, workers: int) -> None:
    """One onnxcam run with every perturbation method and metric; prints run.json's cost per image."""
    manifest = out.parent / f"{out.name}.yaml"
    manifest.write_text(yaml.safe_dump({
        "model": str(graph), "images": {"root": str(images)},
        "methods": ["gradcam", "saliency", "smoothgrad", "occlusion", "scorecam"],
        "occlusion": {"patch": 32, "stride": 16}, "smoothgrad": {"samples": 25},
        "evaluate": {"metrics": ["average_drop", "increase_in_confidence", "top_removal", "deletion", "insertion"]},
        "output": {"dir": str(out), "heatmaps": "none", "overlays": False},
        "runtime": {"providers": ["cpu"], "batch_size": 8, "workers": workers}}))
    measured_run(manifest)
    report = json.loads((out / "run.json").read_text())
    print(f"\n[cpu] onnxcam run on {report['images']} photos: cost per image and target ({report['provider']}, "
          f"evaluate batch 64)")
    print(f"  {'':30} {'ms/image':>10} {'model passes':>13}")
    for kind in ("methods", "metrics"):
        for name, cost in report["cost"][kind].items():
            print(f"  {kind[:-1] + ' ' + name:30} {cost['ms_per_row']:10.1f} {cost['passes_per_row']:13.1f}")
    print("  (each metric is measured on every method's map; average_drop and increase_in_confidence share one pass)")


def perturbation_side_by_side(loaded, graph: Path, inputs: np.ndarray) -> None:
    info = read_graph_info(graph)
    backend = OnnxRuntimeBackend(graph, ["cpu"])
    passes = ExtraPasses(backend, info)
    out = backend.run(MAIN_OUTPUTS, inputs, np.full(len(inputs), -1))
    targets = out["logits"].argmax(axis=1)
    out |= {"input": inputs, "target": targets}
    model, layer = reference_model(loaded, info.target_layer, info.activation_shape[0])
    model.eval().requires_grad_(False)
    tensor, n = torch.from_numpy(inputs), len(inputs)
    rows = []

    ours_s, ours = timed(METHODS["scorecam"], out, {"batch_size": 64}, passes)
    with ScoreCAM(model=model, target_layers=[layer]) as reference:
        reference.batch_size = 64
        theirs_s, theirs = timed(reference, input_tensor=tensor, targets=[ClassifierOutputTarget(int(t))
                                                                          for t in targets])
    delta = np.abs(normalise(resize_maps(ours, inputs.shape[2:])) - theirs).max()
    rows.append(("Score-CAM", "pytorch-grad-cam ScoreCAM", ours_s, theirs_s, f"max |delta| {delta:.1e}"))

    maps = np.stack([explanation(m, inputs.shape[2:]) for m in METHODS["gradcam"](out, {})])
    scores = probabilities(out["logits"], info.output_activation)[np.arange(n), targets]
    metric_rows = [MetricRow(int(targets[i]), float(scores[i]), inputs[i], maps[i]) for i in range(n)]
    evaluation = Evaluation({"average_drop": {}, "increase_in_confidence": {}})
    ours_s, _ = timed(score, evaluation, metric_rows, Scoring(passes), runs_model=True)
    softmax_targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    theirs_s, _ = timed(lambda: (DropInConfidence()(tensor, maps, softmax_targets, model),
                                 IncreaseInConfidence()(tensor, maps, softmax_targets, model)))
    rows.append(("average drop + increase", "pytorch-grad-cam Drop/IncreaseInConfidence", ours_s, theirs_s, ""))

    ours_s, ours = timed(METHODS["occlusion"], out, {"patch": 32, "stride": 16, "fill": "mean", "batch_size": 64},
                         passes)
    occlusion = Occlusion(lambda x: torch.softmax(model(x), dim=1))
    theirs_s, theirs = timed(lambda: occlusion.attribute(tensor, sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16),
                                                         baselines=0, target=torch.from_numpy(targets),
                                                         perturbations_per_eval=64).numpy()[:, 0])
    delta = np.abs(normalise(ours) - normalise(theirs)).max()
    rows.append(("occlusion 32/16", "Captum Occlusion", ours_s, theirs_s, f"max |delta| {delta:.1e}"))

    print(f"\n[cpu] side by side on {n} photos ({loaded.spec}, layer {info.target_layer}, "
          f"{info.activation_shape[0]} channels), seconds per image")
    print(f"  {'':26} {'onnxcam':>9} {'reference':>10}  {'':8} reference")
    for name, reference_name, ours_s, theirs_s, note in rows:
        print(f"  {name:26} {ours_s / n:9.2f} {theirs_s / n:10.2f}  {theirs_s / ours_s:5.1f}x   {reference_name}"
              f"{'; ' + note if note else ''}")


def perturbation_part(args, exports: Path) -> None:
    loaded, graph = exported(args.perturbation_model, exports, SMOKE_INPUT_SIZE if args.smoke else None, saliency=True)
    info = read_graph_info(graph)
    print(f"\nperturbation methods and metrics: {args.perturbation_model}, {args.perturbation_images} photos, "
          f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = dataset(tmp, args.perturbation_images)
        perturbation_costs(graph, tmp / "images", tmp / "out", args.workers)
        inputs = np.stack([to_input(cv2.imread(str(p)), info.preprocessing)[0] for p in paths])
        perturbation_side_by_side(loaded, graph, inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="all", choices=["all", "gradcam", "perturbation", "segmentation"])
    parser.add_argument("--model", default="torchvision:resnet50")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--method", default="gradcam", choices=["gradcam"])
    parser.add_argument("--perturbation-model", default="efficientnet-lite0")
    parser.add_argument("--perturbation-images", type=int, default=4)
    parser.add_argument("--segmentation-model", default="torchvision:lraspp_mobilenet_v3_large")
    parser.add_argument("--segmentation-images", type=int, default=32)
    args = parse(parser, model=SMOKE_MODEL, images=4, batch_size=2, workers=1, perturbation_model=SMOKE_MODEL,
                 perturbation_images=2, segmentation_model="toy_models:segmenter", segmentation_images=2)
    with tempfile.TemporaryDirectory() as tmp:
        exports = Path(tmp) if args.smoke else ROOT / "exports"  # the full size's graphs are kept for the next run
        if args.part in ("all", "gradcam"):
            gradcam_part(args, exports)
        if args.part in ("all", "perturbation"):
            perturbation_part(args, exports)
        if args.part in ("all", "segmentation"):
            segmentation_part(args, exports)


def gradcam_part(args, exports: Path) -> None:
    loaded, graph = exported(args.model, exports, SMOKE_INPUT_SIZE if args.smoke else None)
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
            backend = OnnxRuntimeBackend(graph, providers, [MAIN_OUTPUTS])
            ours_compute = compute_only(backend, MAIN_OUTPUTS, batches, args.method, at_input_size=True)
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



def segmentation_part(args, exports: Path) -> None:
    loaded, graph = exported(args.segmentation_model, exports, SMOKE_INPUT_SIZE if args.smoke else None)
    info = read_graph_info(graph)
    print(f"\nsegmenter {args.segmentation_model}, layer {info.target_layer}, input {list(info.preprocessing.size)}, "
          f"{args.segmentation_images} JPEG photos, batch {args.batch_size}, Grad-CAM of the class on most pixels")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = dataset(tmp, args.segmentation_images)
        ours, peak, provider = onnxcam_end_to_end(graph, tmp / "images", tmp / "out", args.batch_size, args.workers,
                                                  ["cpu"], "gradcam", targets="top1")
        model = load_model(args.segmentation_model).model
        model.load_state_dict(loaded.model.state_dict())
        model.requires_grad_(False)
        theirs = grad_cam_end_to_end(model, model.get_submodule(info.target_layer), paths, info.preprocessing,
                                     args.batch_size, "cpu", tmp / "ref", segmenter=True)
    print(f"  onnxcam on {provider} {ours:9.2f}/s (peak RSS {peak:.0f} MiB)")
    print(f"  pytorch-grad-cam (frozen) {theirs:6.2f}/s   onnxcam is {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
