"""`onnxcam run --ray`: Ray actors give the local engine's results, one actor per GPU, each image exactly once
when workers die, when the driver is stopped or killed, and a file that kills its worker every time ends as an
error row. A local Ray with logical resources (4 CPUs, 2 GPUs declared; providers [cpu]) stands in for a server."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import cv2
import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.manifest import ManifestError, load_manifest
from onnxcam.runner.model.cuda import cuda_unavailable
from onnxcam.runner.run import Run
from runner_helpers import Gate, read_index, smooth_image, start_run, wait_for_rows, write_images, write_manifest

ray = pytest.importorskip("ray", reason="--ray needs the ray extra (pip install -e '.[ray]')")
from onnxcam.runner.engines import EngineError  # noqa: E402
from onnxcam.runner.engines.ray_data import ExplainWorker, RaySettings, plan_actors  # noqa: E402

METHODS = ("gradcam", "guided_backprop")


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net")[1].path


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local Ray shared by the tests (its address, for runs in other processes to join)."""
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def manifest_in(folder: Path, toy: Path, images: Path, methods=METHODS, **sections) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_manifest(folder, toy, images, methods=methods, targets={"topk": 2}, **sections)


def output_files(out: Path) -> dict[str, str]:
    return {str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in out.rglob("*") if path.is_file() and path.suffix in (".npy", ".png", ".jpg")}


def partials(out: Path) -> list[Path]:
    return sorted(out.rglob(".*.partial")) + sorted(out.glob(".onnxcam-partial"))


def assert_each_once(out: Path, images: int) -> list[dict[str, str]]:
    rows = read_index(out)
    counts = collections.Counter((row["image"], row["target_class"], row["method"]) for row in rows)
    assert max(counts.values()) == 1, "no (image, target, method) twice"
    assert len({row["image"] for row in rows}) == images
    assert not partials(out), "no temporary files left"
    return rows


def test_plan_one_actor_per_gpu_or_per_node_of_cpus():
    server = [{"CPU": 64.0, "GPU": 8.0}]
    assert plan_actors(server, "auto", "m.yaml").__dict__ == {"count": 8, "cpus": 8.0, "gpus": 1,
                                                              "providers": ("cuda",)}
    assert plan_actors(server, ["cpu"], "m.yaml").providers == ("cpu",), "providers [cpu]: CPU sessions on GPU slots"
    mixed = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 4.0}, {"CPU": 32.0}]
    assert (plan_actors(mixed, "auto", "m.yaml").count, plan_actors(mixed, "auto", "m.yaml").cpus) == (6, 2.0)
    assert plan_actors([{"CPU": 2.0, "GPU": 4.0}], "auto", "m.yaml").cpus == 0.5
    cpus_only = plan_actors([{"CPU": 16.0}, {"CPU": 8.0}], "auto", "m.yaml")
    assert (cpus_only.count, cpus_only.cpus, cpus_only.gpus, cpus_only.providers) == (3, 8.0, 0, ("cpu",))
    with pytest.raises(ManifestError, match=r"^m.yaml: runtime.providers: \['cuda'\] but the Ray cluster has no GPU"):
        plan_actors([{"CPU": 16.0}], ["cuda"], "m.yaml")
    head_without_cpus = plan_actors([{"CPU": 0.0}, {"CPU": 4.0}], "auto", "m.yaml")
    assert (head_without_cpus.count, head_without_cpus.cpus) == (1, 4.0)
    with pytest.raises(EngineError, match="no node with a CPU or a GPU"):
        plan_actors([{"CPU": 0.0}], "auto", "m.yaml")


def test_same_results_as_the_local_engine(toy, cluster, tmp_path):
    images = tmp_path / "images"
    write_images(images, 40, size=(60, 90))
    local = Run(load_manifest(manifest_in(tmp_path / "local", toy, images)), quiet=True).run()
    ray_manifest = load_manifest(manifest_in(tmp_path / "ray", toy, images))
    distributed = Run(ray_manifest, quiet=True, engine="ray", settings=RaySettings()).run()
    assert (distributed.images, distributed.rows, distributed.errors) == (local.images, local.rows, 0) == (40, 160, 0)

    out_local, out_ray = tmp_path / "local" / "out", tmp_path / "ray" / "out"
    sort = lambda rows: sorted(tuple(sorted(row.items())) for row in rows)  # noqa: E731
    assert sort(read_index(out_ray)) == sort(read_index(out_local))
    files = output_files(out_ray)
    thumbnails = 160 + 40  # one per row, one photograph per image
    assert len(files) == 2 * 160 + thumbnails and files == output_files(out_local), "every file byte-identical"
    report, local_report = (json.loads((out / "run.json").read_text()) for out in (out_ray, out_local))
    assert set(report) == set(local_report) | {"ray"}
    assert (report["engine"], local_report["engine"]) == ("ray", "local")
    assert report["provider"] == local_report["provider"] == "CPUExecutionProvider"
    actors = report["ray"]["actors"]
    gpus = [gpu for actor in actors for gpu in actor["gpus"]]
    assert all(len(actor["gpus"]) == 1 for actor in actors) and len(set(gpus)) == len(gpus)
    assert set(gpus) <= {"0", "1"}, "each actor holds one of the two GPUs, none shared"
    assert sum(actor["images"] for actor in actors) == 40
    assert all(actor["provider"] == "CPUExecutionProvider" for actor in actors)


def meeting_worker(arrivals: Path, actors: int) -> type:
    """An actor whose first chunk waits (bounded) until `actors` actors have each taken one: while the first actor
    holds its chunks, the rest can only go to the others, so every actor gets work whatever the machine's speed."""

    class MeetingWorker(ExplainWorker):
        def __call__(self, batch):
            (arrivals / str(os.getpid())).touch()
            deadline = time.monotonic() + 120  # a bound only: the test fails on the actors it reports, not on time
            while len(list(arrivals.iterdir())) < actors and time.monotonic() < deadline:
                time.sleep(0.01)
            return super().__call__(batch)

    return MeetingWorker


def test_each_gpu_gets_an_actor_of_its_own(toy, cluster, tmp_path):
    write_images(tmp_path / "images", 8 * 16)
    manifest = load_manifest(manifest_in(tmp_path, toy, tmp_path / "images", methods=("gradcam",)))
    (tmp_path / "arrivals").mkdir()
    Run(manifest, quiet=True, engine="ray", settings=RaySettings(worker=meeting_worker(tmp_path / "arrivals", 2))).run()
    actors = json.loads((tmp_path / "out" / "run.json").read_text())["ray"]["actors"]
    assert sorted(actor["gpus"] for actor in actors) == [["0"], ["1"]], "one actor per GPU, each its own"


def crashing_worker(poison: str, once: str, flag: Path) -> type:
    """An actor whose process exits while reading `poison` (every time) and while writing `once` (the first time,
    after leaving a half-written file behind, as a process killed mid-write does)."""

    class CrashingWorker(ExplainWorker):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            read, write = self.engine.stages.read, self.engine.stages.write

            def read_or_crash(ref):
                if ref.key == poison:
                    os._exit(1)
                return read(ref)

            def write_or_crash(result):
                if result.decoded.ref.key == once and not flag.exists():
                    flag.touch()
                    (write.output_dir / f".{once}.gradcam.0.npy.0123.partial").write_bytes(b"half a heatmap")
                    os._exit(1)
                return write(result)

            read_or_crash.memory = read.memory
            self.engine.stages.read, self.engine.stages.write = read_or_crash, write_or_crash

    return CrashingWorker


def test_dead_workers_are_retried_and_a_file_that_kills_every_time_is_an_error_row(toy, cluster, tmp_path):
    images = tmp_path / "images"
    paths = write_images(images, 40)
    poison, once = paths[5].name, paths[22].name
    manifest = load_manifest(manifest_in(tmp_path, toy, images))
    worker = crashing_worker(poison, once, tmp_path / "crashed-once")
    tally = Run(manifest, quiet=True, engine="ray", settings=RaySettings(worker=worker, max_tries=3)).run()
    assert (tally.images, tally.ok, tally.errors) == (40, 39, 1)
    assert (tmp_path / "crashed-once").exists(), "a worker did die while writing"
    rows = assert_each_once(tmp_path / "out", 40)
    errors = [row for row in rows if row["status"] == "error"]
    assert [row["image"] for row in errors] == [poison]
    assert errors[0]["error"].startswith("the worker process died 3 times while this image was in flight")
    per_image = collections.Counter(row["image"] for row in rows if row["status"] == "ok")
    assert set(per_image.values()) == {2 * len(METHODS)} and len(per_image) == 39, "every target and method"
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    assert report["ray"]["worker_died"] is True and report["errors"] == 1
    assert report["cost"]["methods"]["gradcam"]["rows"] == 2 * 39, "a retried chunk's costs are counted once"


def test_stopped_then_killed_driver_resumes_exactly_once(toy, cluster, tmp_path):
    """SIGTERM to a run with its own local Ray, then kill -9 of a run on a cluster, then the run that finishes."""
    images = tmp_path / "images"
    write_images(images, 240)
    manifest = manifest_in(tmp_path, toy, images)
    out, per_image = tmp_path / "out", 2 * len(METHODS)

    # Each run is held by a FIFO in an image's place (the actor reading it blocks), so it is still running when it is
    # stopped; the images before it come back in the chunks before the one that holds it.
    with Gate(images / "img00100.png") as gate:
        stopped = start_run(manifest, "--ray")  # a Ray of its own, which it starts and stops
        gate.wait_until_read(stopped)
        wait_for_rows(out / "index.csv", 20, stopped)
        stopped.send_signal(signal.SIGTERM)
        output = stopped.communicate(timeout=60)[0]  # its Ray goes with it, the blocked actor too
    assert stopped.returncode == 130, output
    assert output.splitlines()[-1].startswith("onnxcam run: interrupted after ")
    assert json.loads((out / "run.json").read_text())["interrupted"] is True
    first = read_index(out)
    assert 0 < len(first) < 240 * per_image and not partials(out)
    assert gate.path.name not in {row["image"] for row in first}
    cv2.imwrite(str(gate.path), smooth_image(48, 64, seed=100))  # the picture write_images made

    with Gate(images / "img00200.png") as gate:
        killed = start_run(manifest, "--ray", cluster)
        gate.wait_until_read(killed)
        wait_for_rows(out / "index.csv", len(first) + 20, killed)
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=60)
    assert len(read_index(out)) < 240 * per_image
    assert gate.path.name not in {row["image"] for row in read_index(out)}
    cv2.imwrite(str(gate.path), smooth_image(48, 64, seed=200))

    code = main(["run", str(manifest), "--ray", cluster, "--quiet"])
    assert code == 0
    rows = assert_each_once(out, 240)
    assert len(rows) == 240 * per_image
    kept = {(row["image"], row["target_class"], row["method"]): row for row in first}
    assert all(kept.get((r["image"], r["target_class"], r["method"]), r) == r for r in rows), "finished rows kept"


def test_cpu_actors_run_openvino(toy, cluster, tmp_path):
    """runtime.backend: openvino plans CPU actors even beside GPUs, and they give the local engine's results."""
    pytest.importorskip("openvino", reason="needs the openvino extra (pip install -e '.[openvino]')")
    assert plan_actors([{"CPU": 64.0, "GPU": 8.0}], "auto", "m.yaml", "openvino").__dict__ == {
        "count": 1, "cpus": 64.0, "gpus": 0, "providers": ()}, "OpenVINO runs on the CPU: one actor a node"
    images = tmp_path / "images"
    write_images(images, 24, size=(60, 90))
    runtime = {"backend": "openvino", "precision": "f32", "batch_size": 4, "workers": 2}
    local = Run(load_manifest(manifest_in(tmp_path / "local", toy, images, runtime=runtime)), quiet=True).run()
    distributed = Run(load_manifest(manifest_in(tmp_path / "ray", toy, images, runtime=runtime)), quiet=True,
                      engine="ray", settings=RaySettings()).run()
    assert (distributed.images, distributed.rows, distributed.errors) == (local.images, local.rows, 0) == (24, 96, 0)
    out_local, out_ray = tmp_path / "local" / "out", tmp_path / "ray" / "out"
    sort = lambda rows: sorted(tuple(sorted(row.items())) for row in rows)  # noqa: E731
    assert sort(read_index(out_ray)) == sort(read_index(out_local))
    assert output_files(out_ray) == output_files(out_local), "every file byte-identical"
    report = json.loads((out_ray / "run.json").read_text())
    assert (report["provider"], report["precision"]) == ("OpenVINO CPU", "f32")
    assert [(actor["provider"], actor["precision"], actor["gpus"]) for actor in report["ray"]["actors"]] == [
        ("OpenVINO CPU", "f32", [])], "one CPU actor on the one node, though the node declares GPUs"


@pytest.mark.skipif(cuda_unavailable() is None, reason="CUDA works here: a GPU actor would use it")
def test_a_gpu_actor_without_cuda_stops_the_run_in_one_line(toy, cluster, tmp_path, capfd):
    write_images(tmp_path / "images", 4)
    manifest = manifest_in(tmp_path, toy, tmp_path / "images",
                           runtime={"providers": "auto", "batch_size": 4, "workers": 2})
    assert main(["run", str(manifest), "--ray", "--quiet"]) == 2
    out, err = capfd.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1 and not err.strip(), err
    assert lines[0].startswith("onnxcam run: error: --ray: ") and "(GPU " in lines[0]
    assert "CUDA unusable: " in lines[0] and lines[0].endswith("(or set runtime.providers: [cpu])")


def test_ray_actors_read_and_write_on_threads_whatever_worker_processes_says(toy, cluster, tmp_path):
    write_images(tmp_path / "images", 1)
    manifest = load_manifest(manifest_in(tmp_path, toy, tmp_path / "images",
                                         runtime={"providers": ["cpu"], "worker_processes": True}))
    run = Run(manifest, quiet=True, engine="ray", settings=RaySettings())
    assert run.notes == ["runtime.worker_processes: the Ray actors read and write on threads; the key is the local "
                         "engine's"]
    assert run.engine.facts()["worker_processes"] is False


def test_without_ray_installed_the_flag_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxcam.runner.engines.ray_data", None)  # what a missing `ray` makes of it
    assert main(["run", str(tmp_path / "m.yaml"), "--ray"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("onnxcam run: error: --ray needs Ray Data, an optional extra (")
    assert out.endswith("): pip install 'onnxcam[ray]'\n") and out.count("\n") == 1
