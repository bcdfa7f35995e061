"""Every benchmark at its --smoke size (a few images, batch 2, a seeded toy graph), each in its own process through
the same code as its full run, so that none rots: it must exit 0 and print its figures. And no benchmark imports
another's internals: what they share is benchmarks/_common.py."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from chromium import find_chromium

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# each benchmark and a line of figures its smoke run prints
FIGURES = {
    "benchmark": r"pytorch-grad-cam, parameters frozen +[\d.]+/s +[\d.]+/s +onnxcam is",
    "big_photos_benchmark": r"ordinary: +peak RSS +\d+ MiB, +[\d.]+ s, +[\d.]+ images/s",
    "gpu_benchmark": r"the same, threads instead of processes +2 +\d+/s",
    "peer_benchmark": r"\| onnxcam, OpenVINO [\d.]+ \| f32 \| [\d.]+ images/s \|",
    "ray_benchmark": r"ray/local [\d.]+; rows and files identical: True",
    "report_benchmark": r"scrolling 60 px a frame for 4 s: \d+ frames/s.*page errors 0",
    "resume_benchmark": r"first new image's rows after [\d.]+ s",
    "stage_profile": r"end to end is \d+% of compute only",
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


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_smoke_run(name):
    if name == "report_benchmark" and find_chromium() is None and not os.environ.get("CI"):
        pytest.skip("no Chromium on PATH: apt-get install -y chromium (make test installs it), or set ONNXCAM_CHROMIUM")
    # RAY_ADDRESS=local: ray_benchmark's Ray is its own, not a cluster that something else started on this machine
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke"], capture_output=True, text=True,
                          env={**os.environ, "RAY_ADDRESS": "local"}, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(FIGURES[name], done.stdout), done.stdout
    if name == "peer_benchmark" and not (BENCHMARKS.parent / ".venv-ovxai" / "bin" / "python").is_file():
        assert "OpenVINO XAI skipped: no Python at" in done.stdout
