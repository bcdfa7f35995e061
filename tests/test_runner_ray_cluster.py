"""`onnxcam run --ray HOST:PORT` against a real `ray start --head --block` with its defaults: Ray 2.60 turns on token
authentication there when a token exists (~/.ray/auth_token). The head runs in its own process group with its own
HOME, token and temporary folder, so neither the user's ~/.ray nor a Ray found with `auto` is touched."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runner_helpers import RUN, read_index, write_images, write_manifest

pytest.importorskip("ray", reason="--ray needs the ray extra (pip install -e '.[ray]')")

pytestmark = pytest.mark.slow  # a Ray head and three runs, each in processes of its own

TOKEN = "c0ffee" * 8
RAY_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A shell of a user whose home is `home`, with no Ray settings of the test's own environment."""
    return {key: value for key, value in os.environ.items() if key not in RAY_ENV} | {"HOME": str(home)} | extra


def wait_for_start(head: subprocess.Popen, log: Path) -> None:
    """Until `ray start --block` says the runtime started (bounded: a head that exits or hangs fails the test)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and head.poll() is None:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"ray start --head did not start (exit {head.poll()}): {log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Iterator[str]:
    """`ray start --head --block` with its defaults and a token in its HOME; its address."""
    home = tmp_path_factory.mktemp("head-home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(TOKEN)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    log = home / "head.log"
    port = free_port()
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
               "--num-cpus=2", "--include-dashboard=false", f"--dashboard-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}",
               "--disable-usage-stats", f"--temp-dir={temp}"]
    try:
        with log.open("w") as out:
            process = subprocess.Popen(command, env=user_env(home), stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            wait_for_start(process, log)
            assert "Token authentication is enabled" in log.read_text(), "ray start's defaults, as a user has them"
            yield f"127.0.0.1:{port}"
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the head and every process it started, in its group
            process.wait(timeout=60)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def manifest(exported, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster-run")
    write_images(folder / "images", 12)
    return write_manifest(folder, exported("toy_models:relu_net")[1].path, folder / "images",
                          targets={"topk": 2})


def join(manifest: Path, address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN, str(manifest), "--ray", address, "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_readme_recipe_joins_a_cluster_with_token_authentication(head, manifest, tmp_path):
    """The user's shell as it is after `ray start --head` on this machine: the token in ~/.ray, no RAY_AUTH_MODE."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(TOKEN)
    run = join(manifest, head, user_env(home))
    assert run.returncode == 0, run.stdout + run.stderr
    rows = read_index(manifest.parent / "out")
    assert len(rows) == 12 * 2 and {row["status"] for row in rows} == {"ok"}, "12 images, 2 targets, gradcam"


@pytest.mark.parametrize(("token", "says"), [
    (None, "wants its auth token, and none was found here: set RAY_AUTH_TOKEN to what `ray get-auth-token` prints"),
    ("wrong", "refused this machine's auth token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token): set "
              "RAY_AUTH_TOKEN to what `ray get-auth-token` prints"),
])
def test_a_missing_or_wrong_token_is_one_line_naming_what_to_set(head, manifest, tmp_path, token, says):
    home = tmp_path / "home"
    home.mkdir()
    run = join(manifest, head, user_env(home, **({"RAY_AUTH_TOKEN": token} if token else {})))
    assert run.returncode == 2
    assert run.stdout == f"onnxcam run: error: --ray: the Ray cluster at {head} {says} on its head node\n"
    assert run.stderr == "", "none of Ray's retries on stderr"
