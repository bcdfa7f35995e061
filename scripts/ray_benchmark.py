"""`onnxcam run --ray` against the local engine (`make bench-ray`): the same JPEGs and manifest, each run in its
own process, alternating, `--rounds` times. A script, not a test; run it with nothing else running.

    python scripts/ray_benchmark.py [--model torchvision:resnet50] [--images 160] [--batch-size 16] [--rounds 2]
                                    [--method gradcam] [--providers auto]

For each run it prints wall seconds, the steady-state rate (images/s from the first rows back to the last, so
model loading, Ray's start and the first batch are apart), Ray's start-up (connecting, then until the first
rows), and the peak RSS of the driver and of each actor. The rows and files of the two engines are compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from benchmark import dataset, exported

# A run in a fresh process: times each image's rows as they reach the driver, then prints the figures as JSON.
CHILD = """
import json, resource, sys, time
from onnxcam.runner.manifest import load_manifest
from onnxcam.runner.run import Run
from onnxcam.runner.engines.ray_data import RaySettings
start = time.monotonic()
settings = RaySettings() if sys.argv[2] == "ray" else None
run = Run(load_manifest(sys.argv[1]), quiet=True, ray=settings)
built = time.monotonic()
arrivals = []
add_rows = run.add_rows
run.add_rows = lambda rows: (arrivals.append(time.monotonic()), add_rows(rows))
tally = run.run()
end = time.monotonic()
steady = (len(arrivals) - arrivals.count(arrivals[0])) / (arrivals[-1] - arrivals[0])
print(json.dumps({"wall_s": end - start, "set_up_s": built - start, "first_rows_s": arrivals[0] - built,
                  "steady": steady, "images": tally.images, "errors": tally.errors,
                  "driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "report": json.loads((run.output_dir / "run.json").read_text())}))
"""


def one_run(manifest: Path, engine: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(manifest), engine], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{engine} run failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    args = parser.parse_args()
    _, graph = exported(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dataset(folder, args.images)
        print(f"{args.images} JPEGs, {args.model} {args.method}, batch {args.batch_size}, providers {args.providers}")
        print(f"{'engine':<7} {'wall s':>7} {'set-up s':>9} {'1st rows s':>11} {'steady img/s':>13} "
              f"{'driver MB':>10} {'actor MB':>9}  provider / actors")
        steady: dict[str, list[float]] = {"local": [], "ray": []}
        outs = {}
        for round_ in range(args.rounds):
            for engine in ("local", "ray"):
                out = folder / f"out-{engine}-{round_}"
                manifest = folder / f"{engine}-{round_}.yaml"
                manifest.write_text(yaml.safe_dump({
                    "model": str(graph), "images": {"root": str(folder / "images")}, "methods": [args.method],
                    "output": {"dir": str(out), "heatmaps": "npy", "overlays": {"format": "jpg", "quality": 90}},
                    "runtime": {"providers": args.providers, "batch_size": args.batch_size}}))
                r = one_run(manifest, engine)
                assert r["images"] == args.images and r["errors"] == 0, r
                steady[engine].append(r["steady"])
                outs[engine] = out
                report = r["report"]
                actors = report.get("ray", {}).get("actors", [])
                actor_mb = max((a["peak_rss_mb"] for a in actors), default=0)
                where = report["provider"]
                if actors:
                    where += (f"; {report['ray']['plan']}, Ray connect {report['ray']['connect_s']:.1f} s; "
                              + ", ".join(f"{a['worker']} GPU {a['gpus'] or '-'} {a['images']} images"
                                          for a in actors))
                print(f"{engine:<7} {r['wall_s']:>7.1f} {r['set_up_s']:>9.1f} {r['first_rows_s']:>11.1f} "
                      f"{r['steady']:>13.2f} {r['driver_mb']:>10.0f} {actor_mb or '':>9}  {where}", flush=True)
        same = fingerprint(outs["local"]) == fingerprint(outs["ray"])
        best = {engine: max(rates) for engine, rates in steady.items()}
        print(f"steady state, best of {args.rounds}: local {best['local']:.2f} images/s, ray {best['ray']:.2f} "
              f"images/s, ray/local {best['ray'] / best['local']:.2f}; rows and files identical: {same}")


if __name__ == "__main__":
    main()
