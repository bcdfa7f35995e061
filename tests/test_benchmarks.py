"""Every benchmark at its --smoke size (a few images, batch 2, a seeded toy graph), each in its own process through
the same code as its full run, so that none rots: it must exit 0 and print its figures. The selected ones start
together, two at a time (about 4 minutes of CPU in all). And no benchmark imports another's internals: what they
share is benchmarks/_common.py."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from chromium import find_chromium

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# each benchmark and a line of figures its smoke run prints, the longest runs first
FIGURES = {
    "benchmark": r"pytorch-grad-cam, parameters frozen +[\d.]+/s +[\d.]+/s +onnxcam is",
    "gpu_benchmark": r"the same, threads instead of processes +2 +\d+/s",
    "ray_benchmark": r"ray/local [\d.]+; rows and files identical: True",
    "big_photos_benchmark": r"ordinary: +peak RSS +\d+ MiB, +[\d.]+ s, +[\d.]+ images/s",
    "stage_profile": r"end to end is \d+% of compute only",
    "onnx_source_benchmark": r"ONNX source / torch-traced: [\d.]+ \(target >= 0.9\)",
    "resume_benchmark": r"first new image's rows after [\d.]+ s",
    "peer_benchmark": r"\| onnxcam, OpenVINO [\d.]+ \| f32 \| [\d.]+ images/s \|",
    "report_benchmark": r"scrolling 60 px a frame for 4 s: \d+ frames/s.*page errors 0",
}


def benchmarks() -> list[str]:
    return sorted(path.stem for path in BENCHMARKS.glob("*.py") if not path.stem.startswith("_"))


def test_every_benchmark_has_a_smoke_run_here():
    assert benchmarks() == sorted(FIGURES)


@pytest.mark.parametrize("name", benchmarks())
def test_no_benchmark_imports_another(name):
    tree = ast.parse((BENCHMARKS / f"{name}.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}
    assert imported.isdisjoint(benchmarks()), f"{name} imports {sorted(imported & set(benchmarks()))}"


def smoke(name: str) -> subprocess.CompletedProcess:
    # RAY_ADDRESS=local: ray_benchmark's Ray is its own, not a cluster that something else started on this machine
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke"], capture_output=True,
                          text=True, env={**os.environ, "RAY_ADDRESS": "local"}, timeout=600)


@pytest.fixture(scope="module")
def smoke_runs(request) -> Iterator[dict[str, Future]]:
    """The smoke runs of the benchmarks this session's test_smoke_run items name, started together, two at a time."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", "") == "test_smoke_run"]
    with ThreadPoolExecutor(2) as pool:
        yield {name: pool.submit(smoke, name) for name in FIGURES if name in names and runnable(name)}
        pool.shutdown(cancel_futures=True)


def runnable(name: str) -> bool:
    """Whether this machine has what the benchmark needs: report_benchmark needs a Chromium (in CI, it must)."""
    return name != "report_benchmark" or find_chromium() is not None or bool(os.environ.get("CI"))


@pytest.mark.parametrize("name", list(FIGURES))
def test_smoke_run(name, smoke_runs):
    if not runnable(name):
        pytest.skip("no Chromium on PATH: apt-get install -y chromium (make test installs it), or set ONNXCAM_CHROMIUM")
    done = smoke_runs[name].result()
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(FIGURES[name], done.stdout), done.stdout
    if name == "peer_benchmark" and not (BENCHMARKS.parent / ".venv-ovxai" / "bin" / "python").is_file():
        assert "OpenVINO XAI skipped: no Python at" in done.stdout
