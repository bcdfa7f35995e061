"""Benchmark (`make bench-onnx`): the explain graph made from a plain ONNX model (`--model onnx:FILE`, gradients
built on the ONNX graph) vs the torch-traced one (`onnxcam export`) of the same weights, side by side.

    python benchmarks/onnx_source_benchmark.py [--model torchvision:resnet50 efficientnet-lite0] [--images 32]
                                               [--batch-size 8] [--repeats 3]
                                               [--methods gradcam gradcam++ guided_backprop] [--smoke]

Per model (seeded random weights, or the bundled pretrained ones): the seconds of `onnxcam export` (trace, convert,
parity check) against those of `torch.onnx.export` of the plain model (TorchScript exporter, opset 18, dynamic batch)
plus those of the ONNX source on that file (read, build the gradients, its gate), each part on its own. Then the same
manifest over the same JPEGs with each graph, `onnxcam run` in a process of its own, alternating (A B A B ...)
`--repeats` times: images/s (the median of the repeats) and the ratio ONNX source / torch-traced. Then ONNX Runtime's
ms/image of the main pass, the graph cut down as a run cuts it, for Grad-CAM (logits, activations, gradients) and for
guided backprop (and input_gradients), alternating too; with the node counts of each cut graph and the op types
whose counts differ, which is where to look when the ONNX source's graph is the slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
import yaml
from _common import MAIN_OUTPUTS, SMOKE_INPUT_SIZE, SMOKE_MODEL, dataset, measured_run, parse
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.export import export_explain_graph
from onnxcam.exporter.onnx_source import export_plain_model, load_plain_model
from onnxcam.exporter.sources import load_model
from onnxcam.runner.inputs.preprocess import to_input
from onnxcam.runner.model.backend import OnnxRuntimeBackend, pruned_graph
from onnxcam.runner.model.graph import read_graph_info

GUIDED_OUTPUTS = (*MAIN_OUTPUTS, "input_gradients")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def plain_export(model: torch.nn.Module, size: tuple[int, int], path: Path) -> None:
    """`torch.onnx.export` as a user writes it (what most zoo files come from): TorchScript, opset 18, any batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, *size),), str(path), dynamo=False, opset_version=18,
                          input_names=["images"], output_names=["scores"],
                          dynamic_axes={"images": {0: "n"}, "scores": {0: "n"}})


def both_graphs(spec: str, folder: Path, input_size: tuple[int, int] | None) -> tuple[Path, Path] | None:
    """The torch-traced and the ONNX source's explain graphs of `spec`'s seeded weights (guided backprop in both);
    prints each export's seconds. None, said in one line, when the plain file does not go through the ONNX source."""
    torch.manual_seed(0)
    loaded = load_model(spec)
    loaded.input_size = input_size or loaded.input_size
    traced, plain, converted = folder / "traced.onnx", folder / "plain.onnx", folder / "onnx-source.onnx"
    traced_s, result = timed(export_explain_graph, loaded, "auto", traced, log=lambda _: None)
    plain_s, _ = timed(plain_export, loaded.model, loaded.input_size, plain)
    info = read_graph_info(traced)
    print(f"\n{spec}: {loaded.input_size[0]}x{loaded.input_size[1]}, torch threads {torch.get_num_threads()}")
    try:
        load_s, model = timed(load_plain_model, f"onnx:{plain}")
        build_s, built = timed(export_plain_model, model, "auto", converted, info.preprocessing, info.labels,
                               log=lambda _: None)
    except ExportError as error:
        print(f"  onnxcam export (torch) {traced_s:.1f} s, torch.onnx.export {plain_s:.1f} s; the ONNX source "
              f"fails: {error}")
        return None
    rows = [("onnxcam export (torch: trace, convert, parity)", traced_s, f"layer {result.layer.name}, map "
             f"{list(info.activation_shape)}"),
            ("torch.onnx.export of the plain model", plain_s, ""),
            (f"ONNX source (read {load_s:.1f} s, build, gate)", load_s + build_s,
             f"layer {built.target_layer}, map {list(built.activation_shape)}"),
            ("torch.onnx.export + ONNX source", plain_s + load_s + build_s,
             f"{traced_s / (plain_s + load_s + build_s):.1f}x less than onnxcam export")]
    for label, seconds, note in rows:
        print(f"  {label:48} {seconds:7.1f} s   {note}")
    if built.activation_shape != info.activation_shape:
        print("  (the two auto layers differ: the speeds below compare different graphs)")
    return traced, converted


def manifest(graph: Path, images: Path, out: Path, methods: list[str], batch: int, workers: int) -> Path:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(graph), "images": {"root": str(images)}, "methods": methods,
        "output": {"dir": str(out), "heatmaps": "none", "overlays": {"format": "jpg", "quality": 90}},
        "runtime": {"providers": ["cpu"], "batch_size": batch, "workers": workers}}))
    return path


def end_to_end(graphs: dict[str, Path], images: Path, tmp: Path, args) -> dict[str, list[float]]:
    """images/s of `onnxcam run` with each graph, alternating, `args.repeats` times each."""
    speeds = {label: [] for label in graphs}
    for repeat in range(args.repeats):
        for label, graph in graphs.items():
            out = tmp / f"out-{label}-{repeat}"
            measured_run(manifest(graph, images, out, args.methods, args.batch_size, args.workers))
            report = json.loads((out / "run.json").read_text())
            speeds[label].append(report["images"] / report["wall_s"])
    return speeds


def pass_ms(graphs: dict[str, Path], outputs: tuple[str, ...], batches: list[np.ndarray], repeats: int
            ) -> dict[str, float]:
    """ms/image of one pass over `batches` with each graph cut down to `outputs` (the median of `repeats`,
    alternating; each session's first batch run once before)."""
    backends = {label: OnnxRuntimeBackend(graph, ["cpu"], [outputs]) for label, graph in graphs.items()}
    for backend in backends.values():
        backend.run(outputs, batches[0], np.full(len(batches[0]), -1))
    times = {label: [] for label in graphs}
    for _ in range(repeats):
        for label, backend in backends.items():
            start = time.perf_counter()
            for batch in batches:
                backend.run(outputs, batch, np.full(len(batch), -1))
            times[label].append((time.perf_counter() - start) * 1000 / sum(len(batch) for batch in batches))
    return {label: statistics.median(values) for label, values in times.items()}


def op_counts(graph: Path, outputs: tuple[str, ...]) -> Counter:
    return Counter(node.op_type for node in onnx.load_from_string(pruned_graph(graph, outputs)).graph.node)


def compare(spec: str, args, folder: Path) -> None:
    graphs = both_graphs(spec, folder, SMOKE_INPUT_SIZE if args.smoke else None)
    if graphs is None:
        return
    traced, converted = graphs
    graphs = {"torch-traced": traced, "ONNX source": converted}
    info = read_graph_info(traced)
    paths = dataset(folder, args.images)
    inputs = np.stack([to_input(cv2.imread(str(p)), info.preprocessing)[0] for p in paths])
    batches = [inputs[i:i + args.batch_size] for i in range(0, len(inputs), args.batch_size)]

    speeds = end_to_end(graphs, folder / "images", folder, args)
    median = {label: statistics.median(values) for label, values in speeds.items()}
    print(f"  onnxcam run, {args.images} JPEGs, methods {' '.join(args.methods)}, batch {args.batch_size}, "
          f"{args.workers} workers, {args.repeats} alternating repeats (median; each repeat)")
    for label, values in speeds.items():
        print(f"    {label:14} {median[label]:7.2f} images/s   ({' '.join(f'{v:.2f}' for v in values)})")
    print(f"    ONNX source / torch-traced: {median['ONNX source'] / median['torch-traced']:.2f} (target >= 0.9)")

    print(f"  ONNX Runtime main pass, ms/image (median of {args.repeats}, alternating), nodes of the cut graph")
    for name, outputs in (("Grad-CAM", MAIN_OUTPUTS), ("guided backprop", GUIDED_OUTPUTS)):
        ms = pass_ms(graphs, outputs, batches, args.repeats)
        counts = {label: op_counts(graph, outputs) for label, graph in graphs.items()}
        print(f"    {name + ' (' + ', '.join(outputs) + ')':66} torch-traced {ms['torch-traced']:7.1f}   "
              f"ONNX source {ms['ONNX source']:7.1f}   speed ratio {ms['torch-traced'] / ms['ONNX source']:.2f}")
        differ = sorted(set(counts["torch-traced"]) | set(counts["ONNX source"]),
                        key=lambda op: -abs(counts["ONNX source"][op] - counts["torch-traced"][op]))
        differ = [op for op in differ if counts["ONNX source"][op] != counts["torch-traced"][op]]
        print(f"      nodes: torch-traced {sum(counts['torch-traced'].values())}, "
              f"ONNX source {sum(counts['ONNX source'].values())}; op counts that differ (traced/source): "
              + (", ".join(f"{op} {counts['torch-traced'][op]}/{counts['ONNX source'][op]}" for op in differ[:10])
                 or "none"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["torchvision:resnet50", "efficientnet-lite0"])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradcam++", "guided_backprop"])
    args = parse(parser, model=[SMOKE_MODEL], images=4, batch_size=2, workers=1, repeats=2)
    for spec in args.model:
        with tempfile.TemporaryDirectory() as tmp:
            compare(spec, args, Path(tmp))


if __name__ == "__main__":
    main()
