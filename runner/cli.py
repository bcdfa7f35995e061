"""The `onnxcam` console script: export-side commands load torch lazily; the rest never do."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import onnx
from onnxcam.runner.model.graph import read_graph_info


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


def run_manifest(args: argparse.Namespace) -> int:
    """Run a manifest; exit 0 when the run finished (error rows included), 2 for an error in the manifest, the
    model, output.dir or the engine."""
    from onnxcam.runner.engines import EngineError
    from onnxcam.runner.manifest import ManifestError, load_manifest
    from onnxcam.runner.model.backend import ModelError
    from onnxcam.runner.outputs.files import OutputDirError
    from onnxcam.runner.run import Run

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's stop ends the run like Ctrl-C
    ray = None
    if args.ray is not None:
        try:
            from onnxcam.runner.engines.ray_data import RaySettings
        except ImportError as error:
            print(f"onnxcam run: error: --ray needs Ray Data, an optional extra ({error}): pip install 'onnxcam[ray]'")
            return 2
        ray = RaySettings(address=args.ray or None)
    try:
        run = Run(load_manifest(args.manifest), quiet=args.quiet, ray=ray)
        with run.opened():
            for note in run.notes:
                print(f"onnxcam run: {note}")
            if not args.quiet:
                print(f"onnxcam run: {run.info.model} ({run.manifest.model.name}), methods {', '.join(run.methods)}, "
                      f"provider {run.provider}, batch {run.manifest.batch_size}, {run.engine.describe()}")
            s = run.run()
    except (ManifestError, ModelError, OutputDirError, EngineError) as error:
        print(f"onnxcam run: error: {error}")
        return 2
    out = run.output_dir
    state = "interrupted after" if s.interrupted else "done:"
    resumed = f" ({s.already_done} already done)" if s.already_done else ""
    rate = s.images / s.seconds if s.seconds else 0.0
    print(f"onnxcam run: {state} {s.images} images{resumed}, {s.ok} ok, {s.errors} errors, {s.rows} rows in "
          f"{s.seconds:.1f} s ({rate:.1f} images/s, {run.provider}); index {out / 'index.csv'}, report "
          f"{out / 'run.json'}")
    if s.table:
        print(f"onnxcam run: faithfulness, mean ± std (rows) over index.csv; {out / 'summary.csv'}, curves in "
              f"{out / 'curves'}\n{s.table}")
    return 130 if s.interrupted else 0


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
    run = commands.add_parser("run", help="explain every image a manifest names: heatmaps, overlays, index.csv")
    run.add_argument("manifest", type=Path)
    run.add_argument("--quiet", action="store_true", help="no progress output, only the last line")
    run.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run on Ray actors, one per GPU: a local Ray, or the cluster at ADDRESS (or $RAY_ADDRESS)")
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
    return {"info": run_info, "run": run_manifest}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
