"""The OpenVINO backend (`runtime.backend: openvino`): in f32 the explain graph's outputs match ONNX Runtime's; in
bf16 Grad-CAM maps on real photographs stay close to f32 (the bounds below); each output set runs a graph cut down to
it; its threads leave room for the read and write pools; whole runs, perturbation methods, metrics and fixations
included, give ONNX Runtime's rows; mistakes are one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.inputs.decode import decode_image
from onnxcam.runner.inputs.preprocess import to_input
from onnxcam.runner.manifest import ManifestError, load_manifest
from onnxcam.runner.methods import METHODS
from onnxcam.runner.methods.maps import normalise
from onnxcam.runner.model.backend import ModelError, OnnxRuntimeBackend
from onnxcam.runner.model.graph import OUTPUTS, read_graph_info
from onnxcam.runner.model.registry import open_backend
from runner_helpers import read_index, write_images, write_manifest
from sample_photos import PHOTOS, write_photos

F32_TOLERANCE = 1e-4  # relative (norm-wise) error of every output against ONNX Runtime
# Input gradients jump where a ReLU's input or a max-pool's maximum is a near-tie, which two float32 runtimes may
# resolve differently: there the exporter's own bound, 1e-2 norm-wise with cosine >= 0.9999.
KINKED = ("input_gradients", "plain_input_gradients")
# bf16 Grad-CAM against f32, efficientnet-lite0 on scikit-image's ten photographs. bf16 keeps 8 significant bits, a
# relative rounding error of at most 2^-9 per value, which OpenVINO's kernels order and accumulate differently on
# CPUs with AMX and with AVX512-BF16 only: the exact peak cell is not the same on both (two photographs, moon and page,
# have f32 maps whose top cells are within 0.03 of each other), these bounds are. Measured on an AMX CPU and on an AMD
# AVX512-BF16 one: cosine >= 0.998, max |delta| 0.12 on the 7x7 map after min-max scaling, the f32 value at the bf16
# peak >= 0.90, the same top-1 on 10 of 10.
BF16_MIN_COSINE = 0.99  # an error of 14% of the map's norm: 1 - cos ~ |error|^2 / 2
BF16_MAX_DELTA = 0.15  # of a map scaled to [0, 1]
BF16_PEAK_AT_LEAST = 0.85  # the f32 map's value at the bf16 map's peak: 1 - BF16_MAX_DELTA at worst
# bf16's top-1 may differ from f32's only where f32's own top logits nearly tie: its logit under f32 is within this
# share of the f32 logits' range of their maximum (a few bf16 roundings of 2^-8 each, accumulated over the layers).
BF16_TOP1_SLACK = 0.02


@pytest.fixture(scope="module")
def openvino():
    return pytest.importorskip("openvino", reason="the OpenVINO backend needs the openvino extra "
                                                  "(pip install -e '.[openvino]')")


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net", saliency=True)[1].path


@pytest.fixture
def compiled(openvino, monkeypatch) -> list[tuple[str, dict, object]]:
    """Every model OpenVINO compiles from here on: (its name, the properties asked for, the compiled model)."""
    seen, compile_model = [], openvino.Core.compile_model

    def spy(core, model, device=None, config=None, **kwargs):
        result = compile_model(core, model, device, config, **kwargs)
        seen.append((model.get_friendly_name(), dict(config or {}), result))
        return result

    monkeypatch.setattr(openvino.Core, "compile_model", spy)
    return seen


def relative_error(value: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(value - expected) / np.linalg.norm(expected))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_cli(capsys, manifest: Path, *flags: str) -> tuple[int, str]:
    code = main(["run", str(manifest), *flags])
    return code, capsys.readouterr().out


# -- the manifest and what is missing: one line ------------------------------------------------------------------


@pytest.mark.parametrize("runtime,expected", [
    ({"providers": ["openvino"]},
     "runtime.providers: openvino is a backend, not an ONNX Runtime provider; write runtime.backend: openvino"),
    ({"providers": ["openvino", "cpu"]},
     "runtime.providers: openvino is a backend, not an ONNX Runtime provider; write runtime.backend: openvino"),
    ({"backend": "openvino", "providers": ["cpu"]},
     "runtime.providers: openvino takes no providers (ONNX Runtime's); drop the key"),
    ({"backend": "openvinno"}, "runtime.backend: expected one of onnxruntime, openvino, got 'openvinno'"),
    ({"providers": ["cpu"], "precision": "bf16"},
     "runtime.precision: bf16 runs on openvino only (onnxruntime serves auto, f32); set runtime.backend: openvino, "
     "or precision auto or f32"),
    ({"backend": "openvino", "precision": "fp16"},
     "runtime.precision: expected one of auto, f32, bf16, got 'fp16'"),
    ({"backend": "openvino", "precison": "f32"}, "runtime.precison: unknown key; did you mean 'precision'?"),
])
def test_runtime_mistakes_are_one_line(toy, tmp_path, runtime, expected):
    write_images(tmp_path / "images", 1)
    path = write_manifest(tmp_path, toy, tmp_path / "images", runtime=runtime)
    with pytest.raises(ManifestError) as raised:
        load_manifest(path)
    assert str(raised.value) == f"{path}: {expected}"


def test_precision_defaults_to_auto(toy, tmp_path):
    path = write_manifest(tmp_path, toy, tmp_path, runtime={"backend": "openvino"})
    assert load_manifest(path).precision == "auto"


def test_without_openvino_installed_the_run_says_how_to_get_it(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: imports fail
    write_images(tmp_path / "images", 1)
    code, out = run_cli(capsys, write_manifest(tmp_path, toy, tmp_path / "images",
                                               runtime={"backend": "openvino"}))
    assert (code, out) == (2, "onnxcam run: error: runtime.backend: openvino needs openvino, an optional extra: "
                              "pip install 'onnxcam[openvino]'\n")
    assert not (tmp_path / "out").exists()


def test_a_file_openvino_cannot_read_is_one_line(openvino, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=rf"^{broken}: OpenVINO cannot read it \(.+\)$"):
        open_backend(broken, "openvino")


def test_fixations_with_weights_in_a_side_file_name_the_fix(openvino, toy, tmp_path):
    import onnx

    path = tmp_path / "side.onnx"  # as the exporter writes graphs over 1 GB
    onnx.save(onnx.load(str(toy)), str(path), save_as_external_data=True, location="side.onnx.data", size_threshold=0)
    backend = open_backend(path, "openvino", output_sets=[("logits",)], precision="f32")
    batch = np.zeros((1, 3, 224, 224), np.float32)
    assert backend.run(("logits",), batch, np.array([-1]))["logits"].shape == (1, 5), "the passes read the side file"
    fix = r"; with weights in a side file, run fixations on ONNX Runtime \(runtime.backend: onnxruntime\)$"
    with pytest.raises(ModelError, match=r"OpenVINO cannot read the forward graph fixations run \(.+\)" + fix):
        backend.forward_values(batch)


# -- the backend ---------------------------------------------------------------------------------------------------


def test_f32_outputs_match_onnx_runtime(openvino, toy):
    batch = np.random.default_rng(0).standard_normal((6, 3, 224, 224)).astype(np.float32)
    targets = np.array([-1, 0, 1, 2, 3, -1])
    ours = open_backend(toy, "openvino", precision="f32").run(OUTPUTS, batch, targets)
    theirs = OnnxRuntimeBackend(toy, ["cpu"]).run(OUTPUTS, batch, targets)
    for name in OUTPUTS:
        assert ours[name].dtype == np.float32 and ours[name].shape == theirs[name].shape, name
        assert relative_error(ours[name], theirs[name]) <= F32_TOLERANCE, name


def test_each_output_set_runs_a_graph_cut_down_to_it(openvino, toy, compiled):
    main_set, logits_only = ("logits", "activations", "gradients", "input_gradients"), ("logits",)
    backend = open_backend(toy, "openvino", output_sets=[main_set, logits_only], precision="f32")
    built = [name for name, _, _ in compiled]
    assert built == ["+".join(main_set), "logits"], "compiled when built: a bad file fails before any work"

    def layers(model) -> set[str]:
        return {op.get_rt_info()["layerType"].astype(str) for op in model.get_runtime_model().get_ordered_ops()}

    assert "Deconvolution" in layers(compiled[0][2]), "guided backprop to the input: transposed convolutions"
    assert "Deconvolution" not in layers(compiled[1][2]), "the logits pass runs no backward op"
    batch = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    both = backend.run(main_set, batch, np.full(3, -1))
    np.testing.assert_array_equal(backend.run(logits_only, batch, np.full(3, -1))["logits"], both["logits"])
    assert len(compiled) == 2, "each set compiled once"


def test_threads_leave_room_for_the_read_and_write_pools(openvino, toy, compiled):
    from onnxcam.runner.model.openvino_backend import available_cores, model_threads

    assert [model_threads(cores, 4) for cores in (1, 2, 3, 4, 8, 16, 64)] == [1, 2, 3, 3, 6, 12, 60]
    assert (model_threads(16, 1), model_threads(16, 2)) == (15, 14), "never more kept than there are workers"
    for cores, workers in ((0, 4), (1, 2), (4096, 1)):  # all it sees, a Ray actor's share, more than there are
        backend = open_backend(toy, "openvino", output_sets=[("logits",)], precision="f32", cores=cores,
                               workers=workers)
        model = compiled[-1][2]
        expected = model_threads(min(cores or available_cores(), available_cores()), workers)
        assert backend.threads == model.get_property("INFERENCE_NUM_THREADS") == expected
        assert model.get_property("NUM_STREAMS") == 1, "one batch at a time: one stream"
        assert model.get_property("ENABLE_CPU_PINNING") is False, "the read and write threads may use any core"


def test_precision_auto_is_bf16_where_the_cpu_has_it(openvino, toy, compiled, monkeypatch):
    """What the backend asks OpenVINO for: its CPU plugin may still compile f32 where the CPU computes bf16 only by
    emulation (AVX2), so the compiled model's own precision says something about the CPU, not the backend."""
    from onnxcam.runner.model import openvino_backend

    for native, expected in ((True, "bf16"), (False, "f32")):
        monkeypatch.setattr(openvino_backend, "native_bf16", lambda core, native=native: native)
        backend = open_backend(toy, "openvino", output_sets=[("logits",)])
        hint = compiled[-1][1][openvino.properties.hint.inference_precision]
        assert (backend.precision, hint) == (expected, {"bf16": openvino.Type.bf16, "f32": openvino.Type.f32}[expected])
        assert backend.notes[0].startswith("OpenVINO ") and f"runs {expected} (" in backend.notes[0]
    with pytest.raises(ModelError, match=r"^runtime.precision: bf16, and this CPU has no native bf16 .*; use auto or "
                                         r"f32$"):
        open_backend(toy, "openvino", precision="bf16")


# -- whole runs ----------------------------------------------------------------------------------------------------


def test_a_run_on_openvino_gives_onnx_runtimes_rows(openvino, toy, tmp_path, capsys):
    """Main pass, extra passes (occlusion, deletion, average drop), fixations' forward pass and top-2 follow-ups."""
    write_images(tmp_path / "images", 5, size=(60, 80))
    methods = ["gradcam", "guided_backprop", "saliency", {"occlusion": {"patch": 56, "stride": 56}}, "fixations"]
    runs = {}
    for name, runtime in (("ort", {"providers": ["cpu"]}), ("ov", {"backend": "openvino", "precision": "f32"})):
        folder = tmp_path / name
        folder.mkdir()
        manifest = write_manifest(folder, toy, tmp_path / "images", methods=methods, targets={"topk": 2},
                                  evaluate={"metrics": ["average_drop", "deletion"], "deletion": {"steps": 4}},
                                  runtime={**runtime, "batch_size": 4, "workers": 2})
        code, out = run_cli(capsys, manifest)
        assert code == 0, out
        runs[name] = (out, read_index(folder / "out"), json.loads((folder / "out" / "run.json").read_text()))
    out, rows, report = runs["ov"]
    first = next(line for line in out.splitlines() if ", methods " in line)
    assert "provider OpenVINO CPU, precision f32, batch 4" in first
    assert (report["provider"], report["precision"]) == ("OpenVINO CPU", "f32")
    assert (runs["ort"][2]["provider"], runs["ort"][2]["precision"]) == ("CPUExecutionProvider", "f32")
    key = lambda row: (row["image"], row["target_class"], row["method"])  # noqa: E731
    theirs = {key(row): row for row in runs["ort"][1]}
    assert len(rows) == len(theirs) == 5 * 2 * 5 and {key(row) for row in rows} == set(theirs)
    assert all(row["status"] == "ok" for row in rows)
    for row in rows:
        other = theirs[key(row)]
        assert row["pred_class"] == other["pred_class"]
        for column in ("pred_score", "target_score", "average_drop", "deletion"):
            assert float(row[column]) == pytest.approx(float(other[column]), rel=1e-4, abs=1e-5), (key(row), column)
        ours_map = np.load(tmp_path / "ov" / "out" / row["heatmap_path"]).astype(np.float32)
        their_map = np.load(tmp_path / "ort" / "out" / other["heatmap_path"]).astype(np.float32)
        if row["method"] == "saliency":  # plain input gradients: a max-pool near-tie moves a few pixels (see KINKED)
            assert relative_error(ours_map, their_map) <= 1e-2 and cosine(ours_map, their_map) >= 0.9999, key(row)
        else:
            assert np.abs(ours_map - their_map).max() <= 1e-3, key(row)  # float16 files


def test_precision_auto_is_on_the_first_line_and_in_run_json(openvino, toy, tmp_path, capsys):
    from onnxcam.runner.model.openvino_backend import native_bf16

    expected = "bf16" if native_bf16(openvino.Core()) else "f32"
    write_images(tmp_path / "images", 2)
    code, out = run_cli(capsys, write_manifest(tmp_path, toy, tmp_path / "images",
                                               runtime={"backend": "openvino", "batch_size": 2, "workers": 2}))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"onnxcam run: OpenVINO {openvino.__version__.split('-')[0]} runs {expected} (")
    assert f"provider OpenVINO CPU, precision {expected}, batch 2" in lines[1]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["precision"] == expected


# -- real photographs (the bundled pretrained efficientnet-lite0) ---------------------------------------------------


@pytest.fixture(scope="module")
def lite0(exported, tmp_path_factory):
    path = exported("efficientnet-lite0")[1].path  # the export other tests share (no plain input gradients)
    info = read_graph_info(path)
    photos = write_photos(tmp_path_factory.mktemp("photos"))
    batch = np.stack([to_input(decode_image(photo, 10**8)[0], info.preprocessing)[0] for photo in photos])
    return path, [photo.stem for photo in photos], batch


@pytest.mark.slow
def test_f32_matches_onnx_runtime_on_real_photographs(openvino, lite0):
    path, names, batch = lite0
    # Without flat saturated areas (the rocket's sky), where input gradients sit on exact ties (see test_runner_parity)
    chosen = [names.index(name) for name in ("chelsea", "coffee", "astronaut", "immunohistochemistry")]
    batch, targets = batch[chosen], np.full(len(chosen), -1)
    outputs = tuple(read_graph_info(path).outputs)
    assert outputs == OUTPUTS[:4]
    ours = open_backend(path, "openvino", precision="f32").run(outputs, batch, targets)
    theirs = OnnxRuntimeBackend(path, ["cpu"]).run(outputs, batch, targets)
    for name in outputs:
        error = relative_error(ours[name], theirs[name])
        if name in KINKED:
            assert error <= 1e-2 and cosine(ours[name], theirs[name]) >= 0.9999, (name, error)
        else:
            assert error <= F32_TOLERANCE, (name, error)


@pytest.mark.slow
def test_bf16_gradcam_stays_close_to_f32_on_real_photographs(openvino, lite0):
    from onnxcam.runner.model.openvino_backend import native_bf16

    if not native_bf16(openvino.Core()):
        pytest.skip("this CPU has no native bf16, so precision auto runs f32 here: nothing to compare")
    path, names, batch = lite0
    assert len(names) == len(PHOTOS), "scikit-image's ten photographs"
    outputs, targets = ("logits", "activations", "gradients"), np.full(len(batch), -1)
    maps, logits = {}, {}
    for precision in ("f32", "bf16"):
        out = open_backend(path, "openvino", output_sets=[outputs], precision=precision).run(outputs, batch, targets)
        maps[precision] = normalise(METHODS["gradcam"](out, {}))
        logits[precision] = out["logits"]
    cosines, deltas, at_peak, same_peak = [], [], [], 0
    for f32, bf16 in zip(maps["f32"], maps["bf16"], strict=True):
        cosines.append(cosine(f32, bf16))
        deltas.append(float(np.abs(f32 - bf16).max()))
        peak = np.unravel_index(bf16.argmax(), bf16.shape)
        at_peak.append(float(f32[peak]))
        same_peak += peak == np.unravel_index(f32.argmax(), f32.shape)  # printed, not asserted (see above)
    chosen, f32_logits = logits["bf16"].argmax(axis=1), logits["f32"]
    # how far below f32's best logit bf16's top-1 class sits under f32, as a share of the f32 logits' range
    top1_short = (f32_logits.max(axis=1) - f32_logits[np.arange(len(batch)), chosen]) / np.ptp(f32_logits, axis=1)
    same_top1 = int((chosen == f32_logits.argmax(axis=1)).sum())
    print(f"\nbf16 vs f32 Grad-CAM, efficientnet-lite0, {len(names)} photographs, 7x7 maps: cosine >= "
          f"{min(cosines):.4f}, max |delta| {max(deltas):.3f}, f32 value at the bf16 peak >= {min(at_peak):.2f}, same "
          f"peak cell {same_peak}/{len(names)}, same top-1 {same_top1}/{len(names)} (bf16's top-1 at most "
          f"{max(top1_short):.4f} of the range below f32's)")
    assert min(cosines) >= BF16_MIN_COSINE and max(deltas) <= BF16_MAX_DELTA and min(at_peak) >= BF16_PEAK_AT_LEAST
    assert max(top1_short) <= BF16_TOP1_SLACK, "bf16 picks a class f32 nearly ties with its best, or the same"
    assert max(deltas) > 1e-3, "bf16 really ran: its maps are not f32's"
