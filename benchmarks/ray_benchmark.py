"""`onnxcam run --ray` against the local engine (`make bench-ray`): the same JPEGs and manifest, each run in its
own process, alternating, `--rounds` times. A script, not a test; run it with nothing else running.

    python benchmarks/ray_benchmark.py [--model torchvision:resnet50] [--images 160] [--batch-size 16] [--rounds 2]
                                       [--method gradcam] [--providers auto] [--smoke]

Each engine runs the N images, then 5N images (the same photographs again). The steady-state rate comes from
the long run: its images over the seconds from the start of the work (the local engine: once the run is built;
Ray: once the first actor starts its first chunk) to the end of the run, so that model loading, Ray's start, the
actors and their sessions are left out and everything else is in. The fixed start-up is the seconds for N less
N at that rate.
It also prints Ray's connect time, the peak RSS of the driver and of each actor, and whether the rows and the
files of the two engines are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _common import ROOT, SMOKE_INPUT_SIZE, SMOKE_MODEL, dataset, exported, parse

LONG = 5  # the long run: this many times the N images

# A run in a fresh process (so its peak RSS is its own): the figures as JSON.
CHILD = r"""
import json, re, sys, time
from onnxcam.runner.manifest import load_manifest
from onnxcam.runner.run import Run
from onnxcam.runner.engines.ray_data import ExplainWorker, RaySettings


class TimedWorker(ExplainWorker):
    def __call__(self, batch):
        self.identity.setdefault("first_chunk_at", time.time())
        return super().__call__(batch)


start = time.time()
run = Run(load_manifest(sys.argv[1]), quiet=True, engine=sys.argv[2],
          settings=RaySettings(worker=TimedWorker) if sys.argv[2] == "ray" else None)
built = time.time()
tally = run.run()
end = time.time()
report = json.loads((run.output_dir / "run.json").read_text())
begin = min((a["first_chunk_at"] for a in report.get("ray", {}).get("actors", [])), default=built)
peak = re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)
print(json.dumps({"wall_s": end - start, "images": tally.images, "errors": tally.errors,
                  "steady": tally.images / (end - begin), "driver_mb": int(peak) / 1024, "report": report}))
"""


def one_run(folder: Path, graph: Path, images: int, engine: str, args) -> dict:
    out = folder / f"out-{engine}-{images}"
    manifest = folder / f"{engine}-{images}.yaml"
    manifest.write_text(yaml.safe_dump({
        "model": str(graph), "images": {"list": str(folder / f"list-{images}.txt")}, "methods": [args.method],
        "output": {"dir": str(out), "heatmaps": "npy", "overlays": {"format": "jpg", "quality": 90}},
        "runtime": {"providers": args.providers, "batch_size": args.batch_size}}))
    done = subprocess.run([sys.executable, "-c", CHILD, str(manifest), engine], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{engine} run failed:\n{done.stdout}{done.stderr}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["images"] == images and figures["errors"] == 0, figures
    figures["rows_and_files"] = fingerprint(out)
    shutil.rmtree(out)
    return figures


def fingerprint(out: Path) -> tuple[list, dict]:
    lines = (out / "index.csv").read_text().splitlines()
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in out.rglob("*") if p.is_file() and p.suffix in (".jpg", ".npy")}
    return sorted(lines[1:]), files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="torchvision:resnet50")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--providers", default="auto")
    args = parse(parser, model=SMOKE_MODEL, images=2, batch_size=2, rounds=1)
    n = args.images
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _, graph = exported(args.model, folder if args.smoke else ROOT / "exports",
                            SMOKE_INPUT_SIZE if args.smoke else None)
        paths = dataset(folder, n)
        (folder / f"list-{n}.txt").write_text("".join(f"{p}\n" for p in paths))
        copies = [folder / "again" / str(k) / p.name for k in range(1, LONG) for p in paths]  # 5N: the N again
        for copy, path in zip(copies, paths * (LONG - 1), strict=True):
            copy.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, copy)
        (folder / f"list-{LONG * n}.txt").write_text("".join(f"{p}\n" for p in [*paths, *copies]))
        print(f"{n} and {LONG * n} JPEGs, {args.model} {args.method}, batch {args.batch_size}, "
              f"providers {args.providers}")
        print(f"{'round':<6}{'engine':<7}{f'{n} img s':>10}{f'{LONG * n} img s':>11}{'steady img/s':>13}{'fixed s':>9}"
              f"{'driver MB':>10}{'actor MB':>9}  provider; actors")
        steady: dict[str, list[float]] = {"local": [], "ray": []}
        same = []
        for round_ in range(1, args.rounds + 1):
            results = {}
            for engine in ("local", "ray"):
                small, large = (one_run(folder, graph, count, engine, args) for count in (n, LONG * n))
                results[engine] = small["rows_and_files"]
                rate = large["steady"]
                steady[engine].append(rate)
                report = small["report"]
                actors = report.get("ray", {}).get("actors", [])
                where = report["provider"]
                if actors:
                    where += (f"; {report['ray']['plan']}, Ray connect {report['ray']['connect_s']:.1f} s; "
                              + ", ".join(f"{a['worker']} GPU {','.join(a['gpus']) or '-'} {a['images']} images"
                                          for a in actors))
                actor_mb = max((a["peak_rss_mb"] for a in actors), default="")
                driver_mb = max(small["driver_mb"], large["driver_mb"])
                print(f"{round_:<6}{engine:<7}{small['wall_s']:>10.1f}{large['wall_s']:>11.1f}{rate:>13.2f}"
                      f"{small['wall_s'] - n / rate:>9.1f}{driver_mb:>10.0f}{actor_mb:>9}  {where}", flush=True)
            same.append(results["local"] == results["ray"])
        best = {engine: max(rates) for engine, rates in steady.items()}
        print(f"steady state, best of {args.rounds}: local {best['local']:.2f} images/s, ray {best['ray']:.2f} "
              f"images/s, ray/local {best['ray'] / best['local']:.2f}; rows and files identical: {all(same)}")


if __name__ == "__main__":
    main()
