"""The TensorFlow/Keras environment (.venv-tf, `make tf`; `make test` builds it) for the tests that explain Keras and
TensorFlow models: tools/keras_models.py runs there, in its own process, since TensorFlow never enters onnxcam's
.venv."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TF_VENV = ROOT / ".venv-tf"
SCRIPT = ROOT / "tools" / "keras_models.py"


def tf_python() -> Path:
    """.venv-tf's python; skips the test where `make tf` has not built it, except in CI (CI=true), where `make test`
    has: fails it."""
    if (TF_VENV / ".installed").exists():
        return TF_VENV / "bin" / "python"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI={os.environ['CI']}, and no {TF_VENV} (make tf)", pytrace=False)
    pytest.skip(f"no TensorFlow environment {TF_VENV}: make tf (2 minutes, 1.8 GB)")


def run_keras(args: list[str], timeout: float) -> None:
    """Runs `python tools/keras_models.py ARGS` in .venv-tf; raises with the last lines of its stderr if it fails."""
    done = subprocess.run([str(tf_python()), str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise RuntimeError(f"keras_models.py {' '.join(args)} exited {done.returncode}:\n{tail}")
