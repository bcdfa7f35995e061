"""The torchvision zoo (`make zoo`): export every classification model of torchvision with `--layer auto` at its
recipe's input size, and write the coverage table into README.md. A script, not a test (hours on two cores);
run it with nothing else running.

    python scripts/zoo.py [--only NAME ...] [--timeout 1800] [--no-readme]

Each model is exported in its own process (a crash or running out of memory costs one row), with random
weights; parameters that torchvision initialises to zero and that would leave every logit or gradient zero
(ViT's head) are drawn from N(0, 0.02) first, so that the parity figures compare real numbers. Per model the
table gives the auto layer and its map, export seconds, the largest parity error over the outputs, and ONNX
Runtime's milliseconds per image for the main pass (logits, activations, gradients) at batch 8 on this CPU; a
model that does not export gets its one-line error.
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

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- zoo table: scripts/zoo.py writes between these lines -->", "<!-- end of zoo table -->"

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np, onnxruntime as ort, torch
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
options = ort.SessionOptions()
options.log_severity_level = 3
session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((8, 3, *loaded.input_size)).astype(np.float32)
feeds = {"input": x, "target": np.full(8, -1, np.int64)}
outputs = ["logits", "activations", "gradients"]
session.run(outputs, feeds)
start = time.perf_counter()
session.run(outputs, feeds)
ms = (time.perf_counter() - start) / 8 * 1000
layer = result.layer
print(json.dumps({"layer": layer.name, "layout": layer.layout, "map": list(result.info.activation_shape),
                  "input": list(loaded.input_size), "seconds": result.seconds, "ms": ms,
                  "parity": max(figure["relative_error"] for figure in result.info.parity.values())}))
"""


def export_one(name: str, folder: Path, timeout: int) -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, name, str(folder / f"{name}.onnx")],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout} s"}
    finally:
        for path in folder.glob(f"{name}.onnx*"):
            path.unlink()
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    if done.returncode in (-9, 137):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return {"error": f"killed by the kernel: more memory than this machine's {memory:.0f} GB"}
    last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), f"exit {done.returncode}")
    return {"error": f"crashed: {last.strip()[:160]}"}


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
        lines.append(f"| {name} | {row['input'][0]}x{row['input'][1]} | `{row['layer']}`{layout} | {row['map']} | "
                     f"{row['seconds']:.0f} | {row['parity']:.1e} | {row['ms']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", help="these models only")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--no-readme", action="store_true", help="print the table, leave README.md alone")
    args = parser.parse_args()
    names = args.only or torchvision.models.list_models(module=torchvision.models)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows[name] = export_one(name, Path(tmp), args.timeout)
            print(name, json.dumps(rows[name]), flush=True)
    text = table(rows)
    print(text)
    if not args.no_readme:
        readme = ROOT / "README.md"
        content = readme.read_text()
        pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
        if not pattern.search(content):
            raise SystemExit(f"README.md has no {START} ... {END} block")
        readme.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", content))


if __name__ == "__main__":
    main()
