"""The torchvision zoo (`make zoo`): export every classification model of torchvision with `--layer auto` at its
recipe's input size, and write the coverage table into docs/models.md. A script, not a test (70 minutes on two
cores); run it with nothing else running.

    python tools/zoo.py [--only NAME ...] [--timeout 1800] [--print-only] [--results exports/zoo.jsonl]
                        [--onnx-source-only] [--table-only]

Each model is exported in its own process (a crash or running out of memory costs one row), with random
weights; parameters that torchvision initialises to zero and that would leave every logit or gradient zero
(ViT's head) are drawn from N(0, 0.02) first, so that the parity figures compare real numbers. Per model the
table gives the auto layer and its map, export seconds, the largest parity error over the outputs, and ONNX
Runtime's milliseconds per image for the main pass (logits, activations, gradients; the graph cut down to
them, as a run does) at batch 8 on this CPU, or at the largest of 4, 2, 1 whose backward fits in memory
(efficientnet_b7 at 600x600 needs some 4 GB per image), each timing in a process of its own; a model that
does not export gets its one-line error. The last column says whether the model's plain ONNX file (the same
weights through `torch.onnx.export`: the TorchScript exporter, opset 18, dynamic batch) goes through the ONNX source
(`--model onnx:FILE --layer auto`, its gradients built on the ONNX graph, checked by its own gate), with the ONNX
source's seconds, or its one-line error. Results are kept in `--results` as they come, so an interrupted run goes on
where it stopped; delete a model's line to export it again. `--onnx-source-only` fills that column alone: the models
without results keep the figures of the table already in docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from doc_block import ROOT, replace_block

PAGE = ROOT / "docs" / "models.md"
START, END = "<!-- zoo table: tools/zoo.py writes between these lines -->", "<!-- end of zoo table -->"

# The model as every child loads it: seeded random weights, all-zero weight matrices (ViT's head) drawn first.
LOAD = r"""
torch.manual_seed(0)
loaded = load_model(f"torchvision:{name}")
with torch.no_grad():
    for parameter in loaded.model.parameters():
        if parameter.dim() >= 2 and not parameter.any():
            parameter.normal_(0, 0.02)
"""

EXPORT = r"""
import json, sys
from pathlib import Path
import torch
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.export import export_explain_graph
from onnxcam.exporter.sources import load_model

name, out = sys.argv[1], Path(sys.argv[2])
{LOAD}
try:
    result = export_explain_graph(loaded, "auto", out, log=lambda _: None)
except ExportError as error:
    print(json.dumps({"error": str(error)}))
    sys.exit(0)
layer = result.layer
print(json.dumps({"layer": layer.name, "layout": layer.layout, "map": list(result.info.activation_shape),
                  "input": list(loaded.input_size), "seconds": result.seconds,
                  "parity": max(figure["relative_error"] for figure in result.info.parity.values())}))
""".replace("{LOAD}", LOAD)

# The same weights as a user's plain ONNX file, then the ONNX source on it (`--layer auto`, its own gate); the
# seconds of each part.
ONNX_SOURCE = r"""
import json, sys, time, warnings
from pathlib import Path
import torch
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.onnx_source import export_plain_model, load_plain_model
from onnxcam.exporter.sources import load_model
from onnxcam.runner.model.graph import Preprocessing

name, folder = sys.argv[1], Path(sys.argv[2])
{LOAD}
plain, out = folder / f"{name}-plain.onnx", folder / f"{name}-explain.onnx"
started = time.perf_counter()
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(loaded.model.eval(), (torch.zeros(1, 3, *loaded.input_size),), str(plain), dynamo=False,
                          opset_version=18, input_names=["images"], output_names=["scores"],
                          dynamic_axes={"images": {0: "n"}, "scores": {0: "n"}})
except Exception as error:
    print(json.dumps({"error": f"torch.onnx.export: {type(error).__name__}: {str(error).splitlines()[0][:200]}"}))
    sys.exit(0)
exported = time.perf_counter() - started
started = time.perf_counter()
preprocessing = Preprocessing(size=loaded.input_size, mean=loaded.mean, std=loaded.std)
try:
    export_plain_model(load_plain_model(f"onnx:{plain}"), "auto", out, preprocessing, loaded.labels,
                       log=lambda _: None)
except ExportError as error:
    print(json.dumps({"error": str(error), "torch_onnx_export_seconds": exported}))
    sys.exit(0)
print(json.dumps({"seconds": time.perf_counter() - started, "torch_onnx_export_seconds": exported}))
""".replace("{LOAD}", LOAD)

# The main pass as a run makes it (the graph cut down to logits, activations, gradients), timed on the second call.
TIME = r"""
import sys, time
from pathlib import Path
import numpy as np
from onnxcam.runner.model.backend import OnnxRuntimeBackend

path, batch, height, width = Path(sys.argv[1]), *map(int, sys.argv[2:])
backend = OnnxRuntimeBackend(path, ["cpu"])
x = np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32)
outputs, targets = ("logits", "activations", "gradients"), np.full(batch, -1, np.int64)
backend.run(outputs, x, targets)
start = time.perf_counter()
backend.run(outputs, x, targets)
print((time.perf_counter() - start) / batch * 1000)
"""
BATCHES = (8, 4, 2, 1)  # ms/image at batch 8, or at the largest batch whose backward fits in memory


def _child(code: str, args: list[str], timeout: int) -> tuple[str, str]:
    """(the last line printed, "") or ("", why it failed)."""
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "", f"no result within {timeout} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return lines[-1], ""
    if done.returncode in (-9, 137):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return "", f"killed by the kernel: more memory than this machine's {memory:.0f} GB"
    last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), f"exit {done.returncode}")
    return "", f"crashed: {last.strip()[:160]}"


def onnx_source(name: str, folder: Path, timeout: int) -> dict:
    """The ONNX source column's result: {"seconds", "torch_onnx_export_seconds"} or {"error"}."""
    try:
        line, error = _child(ONNX_SOURCE, [name, str(folder)], timeout)
        return json.loads(line) if line else {"error": error}
    finally:
        for path in folder.glob(f"{name}-*.onnx*"):
            path.unlink()


def export_one(name: str, folder: Path, timeout: int) -> dict:
    out = folder / f"{name}.onnx"
    try:
        line, error = _child(EXPORT, [name, str(out)], timeout)
        row = json.loads(line) if line else {"error": error}
        if "error" in row:
            return row
        for batch in BATCHES:
            line, error = _child(TIME, [str(out), str(batch), *map(str, row["input"])], timeout)
            if line:
                return row | {"ms": float(line), "batch": batch}
        return row | {"ms_error": error}
    finally:
        for path in folder.glob(f"{name}.onnx*"):
            path.unlink()


def source_cell(row: dict) -> str:
    """The ONNX source column's cell: "yes (N s)", the one-line error (shortened), or empty before it ran."""
    result = row.get("onnx_source")
    if result is None:
        return ""
    if "error" in result:
        error = result["error"].replace("|", "\\|")
        return f"no: {error[:157] + '...' if len(error) > 160 else error}"
    return f"yes ({result['seconds']:.0f} s)"


def table(rows: dict[str, dict]) -> str:
    ok = [name for name, row in rows.items() if "error" not in row]
    failed = [name for name in rows if name not in ok]
    slowest = max(ok, key=lambda name: rows[name]["seconds"], default=None)
    tried = [row["onnx_source"] for row in rows.values() if "onnx_source" in row]
    through = sum("error" not in result for result in tried)
    summary = (f"{len(ok)} of {len(rows)} torchvision classification models export with parity at their recipe's "
               f"input size (random weights, `--layer auto`, {os.cpu_count()} cores of {platform.machine()}; "
               f"`make zoo`)" + (f"; the slowest, {slowest}, in {rows[slowest]['seconds']:.0f} s" if slowest else "")
               + (f"; {len(failed)} do not: {', '.join(failed)}." if failed else ".")
               + (f" As plain ONNX files (`torch.onnx.export`: TorchScript, opset 18, dynamic batch), {through} of the "
                  f"{len(tried)} tried go through the ONNX source (`--model onnx:FILE --layer auto`)"
                  + (f"; {len(rows) - len(tried)} not tried yet." if len(tried) < len(rows) else ".") if tried else ""))
    lines = [summary, "",
             "| model | input | auto layer | map [C, h, w] | export s | parity | ms/image (batch 8) | ONNX source |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | | **does not export**: {row['error']} | | | | | {source_cell(row)} |")
            continue
        layout = "" if row["layout"] == "nchw" else f" ({row['layout']})"
        if "ms" in row:
            speed = f"{row['ms']:.0f}" + (f" (batch {row['batch']})" if row.get("batch", 8) != 8 else "")
        else:
            speed = row.get("ms_error", "")
        lines.append(f"| {name} | {row['input'][0]}x{row['input'][1]} | `{row['layer']}`{layout} | {row['map']} | "
                     f"{row['seconds']:.0f} | {row['parity']:.1e} | {speed} | {source_cell(row)} |")
    return "\n".join(lines)


def from_table(text: str) -> dict[str, dict]:
    """The rows that `table` wrote into docs/models.md, read back (figures as rounded there; the ONNX source column,
    where present, is left out: that mode fills it anew)."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) < 7 or cells[0] in ("model", "---"):
            continue
        name = cells[0]
        if cells[2].startswith("**does not export**: "):
            rows[name] = {"error": cells[2].removeprefix("**does not export**: ")}
            continue
        layer = re.fullmatch(r"`(.+)`(?: \((\w+)\))?", cells[2])
        speed = re.fullmatch(r"([\d.]+)(?: \(batch (\d+)\))?", cells[6])
        rows[name] = {"layer": layer[1], "layout": layer[2] or "nchw", "map": json.loads(cells[3]),
                      "input": [int(side) for side in cells[1].split("x")], "seconds": float(cells[4]),
                      "parity": float(cells[5]),
                      **({"ms": float(speed[1]), "batch": int(speed[2] or 8)} if speed else {"ms_error": cells[6]})}
    return rows


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", help="these models only")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--print-only", action="store_true", help="print the table, leave docs/models.md alone")
    parser.add_argument("--results", type=Path, default=ROOT / "exports" / "zoo.jsonl",
                        help="one JSON line per model; models already in it are not exported again (delete a "
                             "line to redo that model) (default exports/zoo.jsonl)")
    parser.add_argument("--onnx-source-only", action="store_true",
                        help="fill only the ONNX source column: models not in --results keep the figures of "
                             "docs/models.md's table instead of being exported again")
    parser.add_argument("--table-only", action="store_true",
                        help="write the table from what --results (and, with --onnx-source-only, docs/models.md) "
                             "hold, running nothing: a model not yet tried gets empty cells")
    args = parser.parse_args()
    names = args.only or torchvision.models.list_models(module=torchvision.models)
    done = {}
    if args.results.exists():  # a model's last line wins
        done = {row.pop("model"): row for row in map(json.loads, args.results.read_text().splitlines()) if row}
    if args.onnx_source_only:
        page = PAGE.read_text()
        done = from_table(page[page.index(START):page.index(END)]) | done
    args.results.parent.mkdir(parents=True, exist_ok=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, open(args.results, "a") as results:
        for name in names:
            row = done.get(name)
            if args.table_only:
                rows[name] = row or {"error": "not tried yet"}
                continue
            if row is None:
                row = export_one(name, Path(tmp), args.timeout)
            elif "onnx_source" in row:
                rows[name] = row
                continue
            rows[name] = row | {"onnx_source": onnx_source(name, Path(tmp), args.timeout)}
            print(name, json.dumps(rows[name]), flush=True)
            results.write(json.dumps({"model": name, **rows[name]}) + "\n")
            results.flush()
    text = table(rows)
    print(text)
    if not args.print_only:
        replace_block(PAGE, START, END, text)


if __name__ == "__main__":
    main()
