"""The wheel: built from the repository, installed with its dependencies from the package index into a clean virtual
environment, it runs `onnxcam --version`, `doctor` and `run` with no repository file and no torch (needs the
package index, as `make setup` does)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from onnxcam.runner import __version__
from runner_helpers import read_index, write_images, write_manifest

ROOT = Path(__file__).resolve().parent.parent
BUILT_FROM = ("pyproject.toml", "README.md", "LICENSE", "runner", "exporter")  # what the build reads
EXTRAS_ONLY = {"onnxcam.runner.engines.ray_data", "onnxcam.runner.model.openvino_backend"}  # the ray, openvino extras

IMPORT_ALL = """
import importlib, importlib.util, pkgutil, sys
import onnxcam.runner as runner
for module in pkgutil.walk_packages(runner.__path__, "onnxcam.runner."):
    if module.name not in sys.argv[1:]:
        importlib.import_module(module.name)
print(runner.__file__)
print(importlib.util.find_spec("torch"))
"""


def checked(command: list[str], **options) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **options)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stdout}{result.stderr}"
    return result


@pytest.mark.slow
def test_the_wheel_alone_runs_a_manifest(exported, tmp_path):
    source = tmp_path / "source"  # a copy: the build writes build/ and an egg-info beside the sources
    source.mkdir()
    for name in BUILT_FROM:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source)
    checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)])
    (wheel,) = (tmp_path / "dist").glob("onnxcam-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"onnxcam/{path.relative_to(ROOT).as_posix()}" for folder in ("runner", "exporter")
               for path in (ROOT / folder).rglob("*.py")}
    assert not modules - names, f"modules missing from the wheel (pyproject.toml's packages): {modules - names}"
    assert f"onnxcam-{__version__}.dist-info/licenses/LICENSE" in names
    assets = {f"onnxcam/runner/report/assets/report.{kind}" for kind in ("html", "css", "js")}
    assert assets <= names, "report.html's page (pyproject.toml's package-data)"

    venv = tmp_path / "venv"
    checked([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    checked([*pip, "install", "-q", str(wheel)])  # its dependencies from the package index
    checked([*pip, "check"])

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    work = tmp_path / "work"  # no repository file in reach: not the working folder, not on the path
    write_images(work / "images", 3)
    model = shutil.copy(exported("toy_models:relu_net")[1].path, work / "toy.onnx")
    manifest = write_manifest(work, Path(model), work / "images", methods=["gradcam", "guided_backprop"])

    def onnxcam(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "onnxcam"), *args], capture_output=True, text=True, timeout=300,
                              cwd=work, env=env)

    where, torch = checked([str(venv / "bin" / "python"), "-c", IMPORT_ALL, *EXTRAS_ONLY], cwd=work,
                           env=env).stdout.splitlines()
    assert where.startswith(str(venv)) and torch == "None"
    assert onnxcam("--version").stdout == f"onnxcam {__version__}\n"
    doctor = onnxcam("doctor")
    assert doctor.returncode in (0, 1) and "\nruns on      " in doctor.stdout, doctor.stdout + doctor.stderr
    run = onnxcam("run", str(manifest), "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    rows = read_index(work / "out")
    assert sorted((row["image"], row["method"], row["status"]) for row in rows) == [
        (f"img{i:05d}.png", method, "ok") for i in range(3) for method in ("gradcam", "guided_backprop")]
    assert all((work / "out" / row["overlay_path"]).is_file() for row in rows)
    assert "onnxcamChunk" in (work / "out" / "report" / "items-00000.js").read_text()
    assert '"entries":3' in (work / "out" / "report.html").read_text(), "the page, built from the wheel's assets"
