"""`onnxcam layers` and `onnxcam export` (both need torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.layers import auto_layer, candidates, probe_layers
from onnxcam.exporter.sources import BUNDLED, SPEC_HELP, LoadedModel, load_model, read_labels
from onnxcam.runner.size import Size


def _floats(text: str) -> tuple[float, float, float]:
    values = [float(v) for v in text.replace(",", " ").split()]
    if len(values) != 3:
        raise argparse.ArgumentTypeError("expected three numbers, e.g. 0.485,0.456,0.406")
    return tuple(values)


def _size(text: str) -> Size:
    parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    if len(parts) not in (1, 2) or min(parts) < 8:
        raise argparse.ArgumentTypeError("expected SIZE or HEIGHTxWIDTH, e.g. 224 or 256x320")
    return Size(parts[0], parts[-1])


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=f"model spec: {SPEC_HELP}")
    parser.add_argument("--weights", type=Path, help="state dict file (loaded with weights_only=True)")
    parser.add_argument("--num-classes", type=int, help="classifier size when it differs from the default 1000")
    parser.add_argument("--input-size", type=_size, help="SIZE or HEIGHTxWIDTH (default: the model's own)")
    parser.add_argument("--grid", type=_size, help="HxW patch grid of a transformer's tokens (default: input size "
                        "over the patch size)")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--layer", default="auto", help="target layer module name, or auto (default)")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx file")
    parser.add_argument("--mean", type=_floats, help="per-channel mean on [0,1] pixels (default: the model's own)")
    parser.add_argument("--std", type=_floats, help="per-channel std on [0,1] pixels (default: the model's own)")
    parser.add_argument("--resize", choices=["stretch", "center_crop"],
                        help="how a photo becomes the input (default: the model's recipe; torchvision and timm: "
                        "center_crop, others: stretch)")
    parser.add_argument("--crop-fraction", type=float, help="center_crop: input size / resized shorter side "
                        "(default: the recipe's, e.g. 224/256 = 0.875)")
    parser.add_argument("--labels", type=Path, help="class names, one per line (or a JSON list)")
    parser.add_argument("--multilabel", action="store_true", help="sigmoid outputs (default: softmax)")
    parser.add_argument("--no-guided", action="store_true", help="leave out the guided-backprop input gradients")
    parser.add_argument("--maps", help="also compute these methods' maps in the graph (as `onnxcam convert`): "
                        "gradcam,gradcam++,xgradcam,hirescam,layercam")
    parser.add_argument("--uint8-input", action="store_true",
                        help="take uint8 [N,H,W,3] BGR pixels and normalise them in the graph (as `onnxcam convert`)")
    parser.add_argument("--fp16", action="store_true",
                        help="compute in float16 (GPUs; inputs and outputs stay float32, gradients scaled exactly)")
    parser.add_argument("--saliency", action="store_true",
                        help="add plain input gradients, for the saliency and smoothgrad methods")


def _load(args: argparse.Namespace) -> LoadedModel:
    loaded = load_model(args.model, args.weights, args.num_classes)
    if args.input_size:
        loaded.input_size = args.input_size
    return loaded


def run_layers(args: argparse.Namespace) -> int:
    loaded = _load(args)
    layers = probe_layers(loaded.model, loaded.input_size, args.grid).layers
    chosen = auto_layer(layers)
    print(f"{loaded.spec}: candidate target layers (maps with h*w > 1), input {list(loaded.input_size)}")
    print(f"  {'name':<40} {'type':<24} {'map [C, h, w]':<18} {'layout':<7} calls")
    for info in candidates(layers):
        mark = "*" if info is chosen else " "
        print(f"{mark} {info.name:<40} {info.kind:<24} {str(list(info.map_shape)):<18} {info.layout:<7} {info.calls}")
    print(f"* = --layer auto ({chosen.name}); tokens and channels-last outputs become [C, h, w] in the graph")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from onnxcam.exporter.export import export_explain_graph

    loaded = _load(args)
    if args.mean:
        loaded.mean = args.mean
    if args.std:
        loaded.std = args.std
    if args.labels:
        loaded.labels = read_labels(args.labels)
    if args.resize:
        loaded.resize = args.resize
    if args.crop_fraction is not None:
        if not 0 < args.crop_fraction <= 1:
            raise ExportError(f"--crop-fraction {args.crop_fraction}: must be in (0, 1], e.g. 0.875")
        loaded.crop_fraction = args.crop_fraction
    print(f"exporting {loaded.spec}" + (" (bundled pretrained ImageNet weights)" if loaded.spec == BUNDLED else ""))
    export_explain_graph(loaded, args.layer, args.out, guided=not args.no_guided, multilabel=args.multilabel,
                         saliency=args.saliency, grid=args.grid, fp16=args.fp16)
    maps = [name for name in (args.maps or "").split(",") if name]
    if maps or args.uint8_input:
        from onnxcam.exporter.serving import convert

        try:
            info, figures = convert(args.out, args.out, maps, args.uint8_input)
        except ValueError as error:
            raise ExportError(str(error)) from None
        print(f"serving options: maps in the graph {', '.join(info.graph_maps) or 'none'}, input {info.input_format}; "
              f"within {max(figures.values()):.1e} of the float graph")
    return 0


COMMANDS = {"layers": run_layers, "export": run_export}


def run(command: str, args: argparse.Namespace) -> int:
    try:
        return COMMANDS[command](args)
    except ExportError as error:
        print(f"onnxcam {command}: error: {error}")
        return 2
