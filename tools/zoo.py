"""The torchvision zoo (`make zoo`): export every classification model of torchvision with `--layer auto` at its
recipe's input size, and write the coverage table into docs/models.md. A script, not a test (70 minutes on two
cores); run it with nothing else running.

    python tools/zoo.py [--only NAME ...] [--timeout 1800] [--print-only] [--results exports/zoo.jsonl]

Each model is exported in its own process (a crash or running out of memory costs one row), with random
weights; parameters that torchvision initialises to zero and that would leave every logit or gradient zero
(ViT's head) are drawn from N(0, 0.02) first, so that the parity figures compare real numbers. Per model the
table gives the auto layer and its map, export seconds, the largest parity error over the outputs, and ONNX
Runtime's milliseconds per image for the main pass (logits, activations, gradients; the graph cut down to
them, as a run does) at batch 8 on this CPU, or at the largest of 4, 2, 1 whose backward fits in memory
(efficientnet_b7 at 600x600 needs some 4 GB per image), each timing in a process of its own; a model that
does not export gets its one-line error. Results are kept in `--results` as they come, so an interrupted run
goes on where it stopped; delete a model's line to export it again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from doc_block import ROOT, replace_block

PAGE = ROOT / "docs" / "models.md"
START, END = "<!-- zoo table: tools/zoo.py writes between these lines -->", "<!-- end of zoo table -->"

EXPORT = r"""
import json, sys
from pathlib import Path
import torch
from onnxcam.exporter.errors import ExportError
from onnxcam.exporter.export import export_explain_graph
from onnxcam.exporter.sources import load_model

name, out = sys.argv[1], Path(sys.argv[2])
torch.manual_seed(0)
loaded = load_model(f"torchvision:{name}")
with torch.no_grad():
    for parameter in loaded.model.parameters():
        if parameter.dim() >= 2 and not parameter.any():
            parameter.normal_(0, 0.02)
try:
    result = export_explain_graph(loaded, "auto", out, log=lambda _: None)
except ExportError as error:
    print(json.dumps({"error": str(error)}))
    sys.exit(0)
layer = result.layer
print(json.dumps({"layer": layer.name, "layout": layer.layout, "map": list(result.info.activation_shape),
                  "input": list(loaded.input_size), "seconds": result.seconds,
                  "parity": max(figure["relative_error"] for figure in result.info.parity.values())}))
"""

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


def table(rows: dict[str, dict]) -> str:
    ok = [name for name, row in rows.items() if "error" not in row]
    failed = [name for name in rows if name not in ok]
    slowest = max(ok, key=lambda name: rows[name]["seconds"], default=None)
    summary = (f"{len(ok)} of {len(rows)} torchvision classification models export with parity at their recipe's "
               f"input size (random weights, `--layer auto`, {os.cpu_count()} cores of {platform.machine()}; "
               f"`make zoo`)" + (f"; the slowest, {slowest}, in {rows[slowest]['seconds']:.0f} s" if slowest else "")
               + (f"; {len(failed)} do not: {', '.join(failed)}." if failed else "."))
    lines = [summary, "",
             "| model | input | auto layer | map [C, h, w] | export s | parity | ms/image (batch 8) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | | **does not export**: {row['error']} | | | | |")
            continue
        layout = "" if row["layout"] == "nchw" else f" ({row['layout']})"
        if "ms" in row:
            speed = f"{row['ms']:.0f}" + (f" (batch {row['batch']})" if row.get("batch", 8) != 8 else "")
        else:
            speed = row.get("ms_error", "")
        lines.append(f"| {name} | {row['input'][0]}x{row['input'][1]} | `{row['layer']}`{layout} | {row['map']} | "
                     f"{row['seconds']:.0f} | {row['parity']:.1e} | {speed} |")
    return "\n".join(lines)


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", help="these models only")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--print-only", action="store_true", help="print the table, leave docs/models.md alone")
    parser.add_argument("--results", type=Path, default=ROOT / "exports" / "zoo.jsonl",
                        help="one JSON line per model; models already in it are not exported again (delete a "
                             "line to redo that model) (default exports/zoo.jsonl)")
    args = parser.parse_args()
    names = args.only or torchvision.models.list_models(module=torchvision.models)
    done = {}
    if args.results.exists():
        done = {row.pop("model"): row for row in map(json.loads, args.results.read_text().splitlines()) if row}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, open(args.results, "a") as results:
        for name in names:
            if name in done:
                rows[name] = done[name]
                continue
            rows[name] = export_one(name, Path(tmp), args.timeout)
            print(name, json.dumps(rows[name]), flush=True)
            results.write(json.dumps({"model": name, **rows[name]}) + "\n")
            results.flush()
    text = table(rows)
    print(text)
    if not args.print_only:
        replace_block(PAGE, START, END, text)


if __name__ == "__main__":
    main()
