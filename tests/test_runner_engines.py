"""The engine registry (engines/registry.py's ENGINES) is what Run and `onnxcam run` use: an entry registered there
(or passed to Run) is built, once output.dir's lock is held, with the run's settings, and runs the work; `--ray`
picks the "ray" entry; a missing package gives the entry's one line naming the extra; which backends an engine runs
is read from BACKENDS' own flags. Nothing here needs Ray: the test entries are injected, not patched in."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path

import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.config import ManifestError
from onnxcam.runner.engines import Engine, EngineError
from onnxcam.runner.engines.registry import ENGINES, EngineKind, EngineSetup
from onnxcam.runner.manifest import load_manifest
from onnxcam.runner.model.backend import ModelError
from onnxcam.runner.model.registry import BACKENDS, BackendKind
from onnxcam.runner.outputs.lock import LOCK_NAME
from onnxcam.runner.run import Run
from runner_helpers import read_index, write_images, write_manifest

ROOT = Path(__file__).resolve().parent.parent
ABSENT = "onnxcam_engine_package_that_is_not_installed"


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net")[1].path


class Recorder:
    """An entry's build and settings: notes the settings each build got and who held output.dir's lock then, and
    builds the local engine."""

    def __init__(self):
        self.builds: list[dict[str, object]] = []

    def build(self, setup: EngineSetup) -> Engine:
        lock = setup.manifest.output_dir / LOCK_NAME
        holder = json.loads(lock.read_text())["pid"] if lock.exists() else None
        self.builds.append({"settings": setup.settings, "lock_holder": holder})
        return ENGINES["local"].build(setup)

    @staticmethod
    def settings(**options: object) -> dict[str, object]:
        return {"options": options}


def test_an_entry_passed_to_run_is_built_inside_the_lock_with_its_settings_and_runs(toy, tmp_path):
    write_images(tmp_path / "images", 3)
    manifest = load_manifest(write_manifest(tmp_path, toy, tmp_path / "images"))
    recorder = Recorder()
    engines = {"recorded": EngineKind(recorder.build, flag="--recorded", settings=recorder.settings)}
    run = Run(manifest, quiet=True, engine="recorded", engines=engines)
    assert recorder.builds == [], "nothing is built before the run holds output.dir"
    tally = run.run()
    assert (tally.images, tally.ok, tally.rows) == (3, 3, 3)
    assert len(read_index(manifest.output_dir)) == 3
    assert recorder.builds == [{"settings": {"options": {}}, "lock_holder": os.getpid()}], "the entry's defaults"
    given = Run(manifest, quiet=True, engine="recorded", settings="mine", engines=engines)
    assert given.settings == "mine"


def test_ray_picks_the_ray_entry_with_its_address(toy, tmp_path, capsys, monkeypatch):
    write_images(tmp_path / "images", 2)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images")
    recorder = Recorder()
    monkeypatch.setitem(ENGINES, "ray", dataclasses.replace(ENGINES["ray"], build=recorder.build, module="",
                                                            settings=recorder.settings))
    assert main(["run", str(manifest), "--ray", "head:6379", "--quiet"]) == 0, capsys.readouterr().out
    (tmp_path / "local").mkdir()
    local = write_manifest(tmp_path / "local", toy, tmp_path / "images")
    assert main(["run", str(local), "--quiet"]) == 0
    assert [build["settings"] for build in recorder.builds] == [{"options": {"address": "head:6379"}}], \
        "--ray's run only: without it, the local entry"
    assert len(read_index(tmp_path / "local" / "out")) == 2


def test_a_missing_package_gives_the_entrys_one_line_naming_the_extra(toy, tmp_path, capsys, monkeypatch):
    write_images(tmp_path / "images", 1)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images")
    monkeypatch.setitem(ENGINES, "ray", dataclasses.replace(ENGINES["ray"], module=ABSENT))
    assert main(["run", str(manifest), "--ray"]) == 2
    assert capsys.readouterr().out == (f"onnxcam run: error: --ray needs Ray Data, an optional extra (No module named "
                                       f"'{ABSENT}'): pip install 'onnxcam[ray]'\n")
    assert not (tmp_path / "out").exists()
    fancy = {"fancy": EngineKind(ENGINES["local"].build, flag="--fancy", module=ABSENT, package="Fancy",
                                 extra="fancy")}
    with pytest.raises(EngineError) as error:
        Run(load_manifest(manifest), quiet=True, engine="fancy", engines=fancy)
    assert str(error.value) == (f"--fancy needs Fancy, an optional extra (No module named '{ABSENT}'): "
                                "pip install 'onnxcam[fancy]'")


def test_the_ray_entrys_extra_is_declared_and_brings_its_package():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    ray = ENGINES["ray"]
    assert ray.ray_actors and not ENGINES["local"].ray_actors
    assert any(requirement.startswith("ray[data]") for requirement in extras[ray.extra])
    assert ray.module == "onnxcam.runner.engines.ray_data" and not ENGINES["local"].module


def test_which_backends_an_engine_runs_is_read_from_backends_flags(toy, tmp_path, monkeypatch):
    """A backend that cannot run on Ray actors, needing a package not installed: an engine on actors refuses it (and
    does not ask for its package, which its actors' nodes need, not this process); the local engine asks for it."""
    monkeypatch.setitem(BACKENDS, "here_only", BackendKind(BACKENDS["onnxruntime"].open, "Here", ray_actors=False,
                                                           package=ABSENT, extra="here"))
    monkeypatch.setitem(BACKENDS, "anywhere", BackendKind(BACKENDS["onnxruntime"].open, "Anywhere", package=ABSENT,
                                                          extra="anywhere"))
    assert [name for name in BACKENDS if not ENGINES["ray"].serves(name)] == ["here_only"]
    assert all(ENGINES["local"].serves(name) for name in BACKENDS)
    write_images(tmp_path / "images", 1)
    manifest = load_manifest(write_manifest(tmp_path, toy, tmp_path / "images"))
    engines = {"actors": EngineKind(ENGINES["local"].build, flag="--actors", ray_actors=True), **ENGINES}
    with pytest.raises(ManifestError) as error:
        Run(dataclasses.replace(manifest, backend="here_only"), quiet=True, engine="actors", engines=engines)
    assert str(error.value) == (f"{manifest.path}: runtime.backend: here_only does not run with --actors; run without "
                                "--actors")
    Run(dataclasses.replace(manifest, backend="anywhere"), quiet=True, engine="actors", engines=engines)
    with pytest.raises(ModelError, match=rf"^runtime.backend: anywhere needs {ABSENT}, an optional extra: pip install "
                                         r"'onnxcam\[anywhere\]'$"):
        Run(dataclasses.replace(manifest, backend="anywhere"), quiet=True, engines=engines)
