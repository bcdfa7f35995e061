"""The `onnxcam` console script: export-side commands load torch lazily; the rest never do."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from pathlib import Path

import onnx
from onnxcam.runner import __version__
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
    if info.model.startswith("onnx:"):
        print("  gradients        built on the ONNX file's graph; parity: logits and activations against the file's "
              "own, gradients against finite differences")
    print(f"  target layer     {info.target_layer} -> activations {list(info.activation_shape)}")
    more = ", ..." if info.num_classes > 3 else ""
    print(f"  classes          {info.num_classes} ({', '.join(info.labels[:3])}{more})")
    print(f"  output           {info.output_activation}; GAP->linear head (exact CAM): {info.gap_linear_head}")
    if info.task == "segmentation":
        print("  task             segmentation: class scores per pixel, each class explained over a target mask "
              "(its predicted pixels, or a given mask)")
    if info.precision != "f32":
        print(f"  precision        {info.precision} inside (float32 in and out); gradients scaled by "
              f"2^{round(math.log2(info.gradient_scale))} before the backward, exactly undone")
    if info.graph_maps or info.input_format != "float":
        print(f"  serving          maps in the graph: {', '.join(info.graph_maps) or 'none'}; input "
              f"{info.input_format}")
    print(f"  preprocessing    {pre.size.height}x{pre.size.width} {pre.resize}, {pre.channel_order}, "
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


def run_filters(args: argparse.Namespace) -> int:
    """Draw a convolution's filters as a grid image, or list the graph's convolutions."""
    from onnxcam.runner.visualise.filters import FiltersError, convolutions, write_filters

    if not args.model.is_file():
        print(f"onnxcam filters: error: {args.model}: no such file")
        return 2
    try:
        if args.list:
            for k, layer in enumerate(convolutions(args.model), 1):
                print(f"#{k:<4} {layer.describe()}")
            return 0
        if args.out is None:
            print("onnxcam filters: error: --out: where to write the picture (e.g. --out filters.png), or --list")
            return 2
        if args.tile < 1:
            print(f"onnxcam filters: error: --tile: {args.tile}; give at least 1 pixel per filter")
            return 2
        chosen = write_filters(args.model, args.out, args.layer, args.tile)
    except FiltersError as error:
        print(f"onnxcam filters: error: {error}")
        return 2
    print(f"onnxcam filters: {chosen.describe()} -> {args.out}")
    return 0


def run_impressions(args: argparse.Namespace) -> int:
    """Generate class impressions through ONNX Runtime and report how the model scores each, as written."""
    from onnxcam.runner.model.backend import ModelError, OnnxRuntimeBackend
    from onnxcam.runner.model.registry import BACKENDS
    from onnxcam.runner.visualise.impressions import Settings, class_impressions, parse_classes, write_impression

    try:
        info = read_graph_info(args.model) if args.model.is_file() else None
        if info is None:
            raise ValueError(f"{args.model}: no such file")
        if "plain_input_gradients" not in info.outputs:
            raise ValueError(f"{args.model} has no plain input gradients, which impressions climb; re-export it "
                             "with --saliency")
        targets = parse_classes(args.classes, info.labels)
        for flag, value, low in (("--steps", args.steps, 1), ("--lr", args.lr, 1e-9), ("--jitter", args.jitter, 0),
                                 ("--rotate", args.rotate, 0), ("--scale", args.scale, 0), ("--colour", args.colour, 0),
                                 ("--tv", args.tv, 0)):
            if value < low:
                raise ValueError(f"{flag}: {value}; give a value of at least {low:g}")
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"--out: cannot create {args.out} ({error.strerror}); pick another folder") from None
        providers = "auto" if args.providers == "auto" else args.providers.split(",")
        if providers != "auto" and not set(providers) <= set(BACKENDS["onnxruntime"].providers):
            raise ValueError(f"--providers: {args.providers}; use auto, cuda, cpu or cuda,cpu")
        backend = OnnxRuntimeBackend(args.model, providers)
    except (ValueError, ModelError) as error:
        print(f"onnxcam impressions: error: {error}")
        return 2
    settings = Settings(steps=args.steps, learning_rate=args.lr, jitter=args.jitter, rotate=args.rotate,
                        scale=args.scale, colour=args.colour, tv=args.tv, seed=args.seed)
    found, seconds = class_impressions(backend, info, targets, settings)
    for impression in found:
        path = write_impression(args.out, impression, info.labels)
        verdict = "" if impression.top1 == impression.target else (
            f"; top-1 is {impression.top1} {info.labels[impression.top1]} (more --steps?)")
        print(f"onnxcam impressions: {impression.target} {info.labels[impression.target]} -> {path}: probability "
              f"{impression.probability:.3f}, TV {impression.total_variation:.1f}{verdict}")
    print(f"onnxcam impressions: {len(found)} classes in {seconds:.1f} s ({seconds / len(found):.1f} s per class, "
          f"{settings.steps} steps, {backend.provider})")
    return 0


def run_manifest(args: argparse.Namespace) -> int:
    """Run a manifest; exit 0 when the run finished (error rows included), 2 for an error in the manifest, the
    model, output.dir or the engine."""
    from onnxcam.runner.engines import EngineError
    from onnxcam.runner.engines.registry import ENGINES
    from onnxcam.runner.manifest import ManifestError, load_manifest
    from onnxcam.runner.model.backend import ModelError
    from onnxcam.runner.outputs.files import OutputDirError
    from onnxcam.runner.run import Run

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's stop ends the run like Ctrl-C
    engine, options = ("ray", {"address": args.ray or None}) if args.ray is not None else ("local", {})
    try:
        ENGINES[engine].check_installed()  # before the manifest: the settings come from the engine's module
        settings = ENGINES[engine].settings(**options)
        run = Run(load_manifest(args.manifest), quiet=args.quiet, engine=engine, settings=settings)
        with run.opened():
            for note in run.notes:
                print(f"onnxcam run: {note}")
            if not args.quiet:
                print(f"onnxcam run: {run.info.model} ({run.manifest.model.name}), methods {', '.join(run.methods)}, "
                      f"provider {run.provider}, precision {run.precision}, batch {run.manifest.batch_size}, "
                      f"{run.engine.describe()}")
            s = run.run()
    except (ManifestError, ModelError, OutputDirError, EngineError) as error:
        print(f"onnxcam run: error: {error}")
        return 2
    out = run.output_dir
    state = "interrupted after" if s.interrupted else "done:"
    resumed = f" ({s.already_done} already done)" if s.already_done else ""
    rate = s.images / s.seconds if s.seconds else 0.0
    regions = (f" ({s.regions} image-class regions x {len(run.methods)} methods)"
               if run.info.task == "segmentation" else "")
    print(f"onnxcam run: {state} {s.images} images{resumed}, {s.ok} ok, {s.errors} errors, {s.rows} rows{regions} in "
          f"{s.seconds:.1f} s ({rate:.1f} images/s, {run.provider}); index {out / 'index.csv'}, run "
          f"{out / 'run.json'}, report {s.report_path}")
    if s.table:
        print(f"onnxcam run: faithfulness, mean ± std (rows) over index.csv; {out / 'summary.csv'}, curves in "
              f"{out / 'curves'}\n{s.table}")
    return 130 if s.interrupted else 0


def run_report(args: argparse.Namespace) -> int:
    """(Re)build report.html for an output.dir from its index.csv."""
    from onnxcam.runner.outputs.files import OutputDirError
    from onnxcam.runner.report.build import REPORT_NAME, write_report

    folder: Path = args.output_dir
    if not folder.is_dir():
        print(f"onnxcam report: error: {folder}: no such folder; give the output.dir of a run")
        return 2
    start = time.perf_counter()
    try:
        counts = write_report(folder.resolve())
    except OutputDirError as error:
        print(f"onnxcam report: error: {error}")
        return 2
    except OSError as error:
        print(f"onnxcam report: error: {folder}: cannot write the report ({error.strerror or error}); free space or "
              "check the folder's permissions")
        return 2
    print(f"onnxcam report: {counts.images} images ({counts.errors} errors), {counts.entries} gallery entries, "
          f"{counts.rows} rows -> {folder / REPORT_NAME} in {time.perf_counter() - start:.1f} s")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Add serving options to an explain graph: CAM maps computed in the graph, uint8 input (no torch)."""
    from onnxcam.exporter.serving import convert

    maps = [name for name in (args.maps or "").split(",") if name]
    if not args.model.is_file():
        print(f"onnxcam convert: error: {args.model}: no such file")
        return 2
    if not maps and not args.uint8_input:
        print("onnxcam convert: error: nothing to do; give --maps gradcam,... and/or --uint8-input")
        return 2
    if args.out.resolve() == args.model.resolve():
        print(f"onnxcam convert: error: --out: {args.out} is the input; write the converted graph beside it")
        return 2
    try:
        info, figures = convert(args.model, args.out, maps, args.uint8_input)
    except ValueError as error:
        print(f"onnxcam convert: error: {error}")
        return 2
    worst = max(figures.values())
    print(f"onnxcam convert: {args.out}: maps in the graph: {', '.join(info.graph_maps) or 'none'}; input "
          f"{info.input_format}; every output within {worst:.1e} of the original (relative)")
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    """Print what runs the model here and the one command that fixes what is missing; exit 1 when there is one."""
    from onnxcam.runner.doctor import diagnose

    lines, fixable = diagnose()
    print("\n".join(lines))
    return 1 if fixable else 0


def build_parser() -> argparse.ArgumentParser:
    from onnxcam.runner.visualise.impressions import Settings

    parser = argparse.ArgumentParser(prog="onnxcam", description="Explain image classifiers in bulk with ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"onnxcam {__version__}")
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
    convert = commands.add_parser("convert", help="add serving options to an explain graph: CAM maps in the graph, "
                                  "uint8 input (checked against the original)")
    convert.add_argument("model", type=Path)
    convert.add_argument("--out", type=Path, required=True, help="the converted graph (.onnx)")
    convert.add_argument("--maps", help="methods whose maps the graph computes: gradcam,gradcam++,xgradcam,hirescam,"
                         "layercam")
    convert.add_argument("--uint8-input", action="store_true",
                         help="take uint8 [N,H,W,3] BGR pixels and normalise them in the graph")
    report = commands.add_parser("report", help="(re)build report.html, a page to browse a run, for an output.dir")
    report.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
    filters = commands.add_parser("filters", help="draw a convolution's filters (the first by default) as a grid")
    filters.add_argument("model", type=Path)
    filters.add_argument("--out", type=Path, help="the picture to write (.png, .jpg)")
    filters.add_argument("--layer", help="a convolution by module name or #k (see --list); default: the first")
    filters.add_argument("--tile", type=int, default=32, help="pixels per filter (default 32)")
    filters.add_argument("--list", action="store_true", help="list the graph's convolutions and stop")
    impressions = commands.add_parser("impressions", help="class impressions: what the model has in memory for a "
                                      "class, from noise (needs an export with --saliency)")
    impressions.add_argument("model", type=Path)
    impressions.add_argument("--classes", required=True, help="class numbers or labels, comma-separated: 1,282")
    impressions.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    defaults = Settings()
    impressions.add_argument("--steps", type=int, default=defaults.steps, help=f"ascent steps ({defaults.steps})")
    impressions.add_argument("--lr", type=float, default=defaults.learning_rate,
                             help=f"mean pixel change per step, pixels in 0..1 ({defaults.learning_rate})")
    impressions.add_argument("--jitter", type=int, default=defaults.jitter, help=f"pixels ({defaults.jitter})")
    impressions.add_argument("--rotate", type=float, default=defaults.rotate, help=f"degrees ({defaults.rotate})")
    impressions.add_argument("--scale", type=float, default=defaults.scale, help=f"relative zoom ({defaults.scale})")
    impressions.add_argument("--colour", type=float, default=defaults.colour,
                             help=f"colour shift per channel ({defaults.colour})")
    impressions.add_argument("--tv", type=float, default=defaults.tv,
                             help=f"total-variation prior's share of each step, 0 for none ({defaults.tv})")
    impressions.add_argument("--seed", type=int, default=defaults.seed)
    impressions.add_argument("--providers", default="auto", help="auto | cuda | cpu | cuda,cpu (default auto)")
    commands.add_parser("doctor", help="what runs the model here (CUDA or CPU), why, and the command that fixes "
                        "what is missing")
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
    commands = {"info": run_info, "run": run_manifest, "report": run_report, "filters": run_filters,
                "impressions": run_impressions, "doctor": run_doctor,
                "convert": run_convert}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
