"""`onnxcam layers` and `onnxcam export`: PyTorch models need torch (imported only for them); `onnx:MODEL.onnx`
needs only the runner's install."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.labels import read_labels
from onnxcam.exporter.specs import BUNDLED, SPEC_HELP, is_onnx
from onnxcam.runner.size import Size

# --preprocess: (mean, std) on [0, 1] pixels and channel order; Keras' `preprocess_input` modes by their names
# ('caffe': BGR, the ImageNet means in 0..255 subtracted, no scaling)
PRESETS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "rgb"),
    "keras-tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "rgb"),
    "keras-caffe": ((103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255,) * 3, "bgr"),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "rgb"),
    "raw": ((0.0, 0.0, 0.0), (1 / 255,) * 3, "rgb"),
}


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
    parser.add_argument("--layout", choices=["nchw", "nhwc"], help="onnx: models: the input's layout, where its shape "
                        "does not tell (Keras and TensorFlow: nhwc)")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--layer", default="auto", help="target layer: a module name (onnx: models: a tensor, node or "
                        "layer name), or auto (default)")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx file")
    parser.add_argument("--mean", type=_floats, help="per-channel mean on [0,1] pixels (default: the model's own)")
    parser.add_argument("--std", type=_floats, help="per-channel std on [0,1] pixels (default: the model's own)")
    parser.add_argument("--preprocess", choices=list(PRESETS), help="instead of --mean/--std: imagenet (Keras' "
                        "'torch' mode), keras-tf (pixels to -1..1), keras-caffe (BGR, ImageNet means subtracted), "
                        "unit (0..1), raw (0..255)")
    parser.add_argument("--channel-order", choices=["rgb", "bgr"], help="onnx: models: the channel order the model "
                        "takes (default: rgb, or the preset's)")
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


def _load(args: argparse.Namespace):
    from onnxcam.exporter.sources import load_model

    loaded = load_model(args.model, args.weights, args.num_classes)
    if args.input_size:
        loaded.input_size = args.input_size
    return loaded


def _torch_only(args: argparse.Namespace) -> None:
    """Options that mean nothing to an ONNX file, refused in one line rather than ignored."""
    for option, value in (("--weights", args.weights), ("--num-classes", args.num_classes), ("--grid", args.grid)):
        if value:
            raise ExportError(f"{option}: {args.model} is an ONNX file, its weights and classes are in it; drop "
                              f"{option}")


def _plain(args: argparse.Namespace):
    from onnxcam.exporter.onnx_source import load_plain_model

    _torch_only(args)
    return load_plain_model(args.model, args.layout, args.input_size)


def run_layers(args: argparse.Namespace) -> int:
    if is_onnx(args.model):
        return _layers_onnx(args)
    from onnxcam.exporter.layers import auto_layer, candidates, probe_layers

    loaded = _load(args)
    probe = probe_layers(loaded.model, loaded.input_size, args.grid)
    layers = probe.layers
    chosen = auto_layer(layers, probe.task)
    segmenter = " (a segmenter)" if probe.task == "segmentation" else ""
    print(f"{loaded.spec}{segmenter}: candidate target layers (maps with h*w > 1), input {list(loaded.input_size)}")
    print(f"  {'name':<40} {'type':<24} {'map [C, h, w]':<18} {'layout':<7} calls")
    for info in candidates(layers):
        mark = "*" if info is chosen else " "
        print(f"{mark} {info.name:<40} {info.kind:<24} {str(list(info.map_shape)):<18} {info.layout:<7} {info.calls}")
    print(f"* = --layer auto ({chosen.name}); tokens and channels-last outputs become [C, h, w] in the graph")
    return 0


def _layers_onnx(args: argparse.Namespace) -> int:
    from onnxcam.exporter.onnx_source import auto_tensor, candidates

    plain = _plain(args)
    chosen = auto_tensor(plain)
    print(f"{plain.spec}: candidate target tensors (maps with h*w > 1), input {plain.layout} "
          f"{list(plain.size)}, {plain.num_classes} classes")
    print(f"  {'tensor':<40} {'op':<20} {'layer':<28} {'map [C, h, w]':<18} layout")
    for tensor in candidates(plain):
        mark = "*" if tensor is chosen else " "
        layer = tensor.scopes[-1] if tensor.scopes else ""
        print(f"{mark} {tensor.name:<40} {tensor.op:<20} {layer:<28} {str(list(tensor.map_shape)):<18} "
              f"{tensor.layout}")
    print(f"* = --layer auto ({chosen.name}); --layer takes a tensor, a node or a layer name (its last output)")
    return 0


def _preprocessing_options(args: argparse.Namespace) -> None:
    if args.preprocess and (args.mean or args.std):
        raise ExportError(f"--preprocess {args.preprocess} sets the mean and std; give either --preprocess or "
                          "--mean/--std")
    if args.crop_fraction is not None and not 0 < args.crop_fraction <= 1:
        raise ExportError(f"--crop-fraction {args.crop_fraction}: must be in (0, 1], e.g. 0.875")
    if args.preprocess:
        args.mean, args.std, order = PRESETS[args.preprocess]
        args.channel_order = args.channel_order or order


def _export_onnx(args: argparse.Namespace) -> None:
    from onnxcam.exporter.onnx_source import export_plain_model
    from onnxcam.runner.model.graph import Preprocessing

    if args.fp16:
        raise ExportError(f"--fp16: not for {args.model} yet; export in float32 (the default)")
    if not (args.mean and args.std):
        raise ExportError(f"{args.model}: give the preprocessing the model was trained with: --preprocess "
                          f"{'|'.join(PRESETS)}, or --mean and --std on [0,1] pixels")
    plain = _plain(args)
    print(f"exporting {plain.spec} ({plain.layout} input {plain.size.height}x{plain.size.width}, "
          f"{plain.num_classes} classes; gradients built on the ONNX graph)")
    given = {"resize": args.resize, "crop_fraction": args.crop_fraction,
             "channel_order": args.channel_order and args.channel_order.upper()}
    preprocessing = Preprocessing(size=plain.size, mean=tuple(args.mean), std=tuple(args.std),
                                  **{key: value for key, value in given.items() if value is not None})
    labels = read_labels(args.labels) if args.labels else []
    export_plain_model(plain, args.layer, args.out, preprocessing, labels, guided=not args.no_guided,
                       multilabel=args.multilabel, saliency=args.saliency)


def _export_torch(args: argparse.Namespace) -> None:
    from onnxcam.exporter.export import export_explain_graph

    if args.layout or args.channel_order == "bgr":
        raise ExportError("--layout and a BGR channel order are for onnx: models; a PyTorch model takes NCHW RGB")
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
        loaded.crop_fraction = args.crop_fraction
    print(f"exporting {loaded.spec}" + (" (bundled pretrained ImageNet weights)" if loaded.spec == BUNDLED else ""))
    export_explain_graph(loaded, args.layer, args.out, guided=not args.no_guided, multilabel=args.multilabel,
                         saliency=args.saliency, grid=args.grid, fp16=args.fp16)


def run_export(args: argparse.Namespace) -> int:
    _preprocessing_options(args)
    if is_onnx(args.model):
        _export_onnx(args)
    else:
        _export_torch(args)
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
    except ImportError as error:
        if is_onnx(args.model):
            raise
        print(f"onnxcam {command}: error: {args.model} needs the exporter extras ({error}); pip install -e "
              "'.[export]' (an onnx:MODEL.onnx file needs none)")
        return 2
