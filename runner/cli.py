"""The `onnxcam` console script: export-side commands load torch lazily; the rest never do."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
from onnxcam.runner.explain_graph import read_graph_info


def run_info(args: argparse.Namespace) -> int:
    """Print an explain graph's metadata, inputs, outputs and export parity."""
    path: Path = args.model
    if not path.is_file():
        print(f"onnxcam info: error: {path}: no such file")
        return 2
    try:
        info = read_graph_info(path)
    except ValueError as error:
        print(f"onnxcam info: error: {error}")
        return 2
    graph = onnx.load(str(path), load_external_data=False).graph

    def shape(value) -> str:
        dims = [d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim]
        return f"[{', '.join(dims)}] {onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()}"

    pre = info.preprocessing
    print(f"{path}: onnxcam explain graph (format {info.format_version})")
    print(f"  model            {info.model}")
    print(f"  target layer     {info.target_layer} -> activations {list(info.activation_shape)}")
    more = ", ..." if info.num_classes > 3 else ""
    print(f"  classes          {info.num_classes} ({', '.join(info.labels[:3])}{more})")
    print(f"  output           {info.output_activation}; GAP->linear head (exact CAM): {info.gap_linear_head}")
    print(f"  preprocessing    {pre.size[0]}x{pre.size[1]} {pre.resize}, {pre.channel_order}, "
          f"mean {list(pre.mean)}, std {list(pre.std)}")
    for value in graph.input:
        print(f"  input            {value.name:<16} {shape(value)}")
    for value in graph.output:
        print(f"  output           {value.name:<16} {shape(value)}")
    for name, figures in info.parity.items():
        print(f"  parity           {name:<16} relative error {figures['relative_error']:.2e}, "
              f"cosine {figures['cosine']:.6f}")
    print("  versions         " + ", ".join(f"{k} {v}" for k, v in info.versions.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxcam", description="Explain image classifiers in bulk with ONNX Runtime.")
    commands = parser.add_subparsers(dest="command", required=True)
    export_side = {
        "layers": "list candidate target layers of a PyTorch model (needs torch)",
        "export": "export a PyTorch model to an ONNX explain graph (needs torch)",
    }
    for name, help_text in export_side.items():
        commands.add_parser(name, help=help_text, add_help=False)
    info = commands.add_parser("info", help="print an explain graph's metadata and parity figures")
    info.add_argument("model", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("layers", "export"):
        try:
            from onnxcam.exporter import cli as exporter_cli
        except ImportError as error:
            print(f"onnxcam {argv[0]}: error: needs the exporter extras ({error}); pip install -e '.[export]'")
            return 2
        parser = argparse.ArgumentParser(prog=f"onnxcam {argv[0]}")
        if argv[0] == "layers":
            exporter_cli.add_model_arguments(parser)
        else:
            exporter_cli.add_export_arguments(parser)
        return exporter_cli.run(argv[0], parser.parse_args(argv[1:]))
    args = build_parser().parse_args(argv)
    return {"info": run_info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
