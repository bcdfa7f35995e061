"""`onnxcam run` end to end on a small exported model: outputs, targets, bad files, errors, providers."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from onnxcam.runner.cli import main
from onnxcam.runner.inputs.preprocess import to_input
from onnxcam.runner.manifest import load_manifest
from onnxcam.runner.methods import METHODS
from onnxcam.runner.model.backend import ModelError, OnnxRuntimeBackend
from onnxcam.runner.model.graph import read_graph_info
from PIL import Image
from runner_helpers import (
    FlakyBackend,
    heatmap_at_image_size,
    read_index,
    smooth_image,
    write_images,
    write_manifest,
)

CAM_METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "cam"]


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net")[1].path


def run_cli(capsys, manifest: Path, *flags: str) -> tuple[int, str]:
    code = main(["run", str(manifest), *flags])
    return code, capsys.readouterr().out


def test_outputs_for_every_method(toy, tmp_path, capsys):
    write_images(tmp_path / "images" / "sub", 3, size=(60, 90))
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=[*CAM_METHODS, "guided_backprop",
                                                                           "guided_gradcam"])
    code, out = run_cli(capsys, manifest, "--quiet")
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith("onnxcam run: done: 3 images, 3 ok, 0 errors, 27 rows")
    rows = read_index(tmp_path / "out")
    assert len(rows) == 3 * 9
    for row in rows:
        assert row["status"] == "ok" and row["image"].startswith("sub/img")
        assert (row["width"], row["height"]) == ("90", "60")
        assert row["target_class"] == row["pred_class"]  # top1
        assert row["overlay_path"] == f"{row['image']}.{row['method']}.{row['target_class']}.jpg"
        assert [row[f"region_{c}"] for c in ("x0", "y0", "x1", "y1")] == ["0", "0", "90", "60"]
        heat = np.load(tmp_path / "out" / row["heatmap_path"])
        overlay = cv2.imread(str(tmp_path / "out" / row["overlay_path"]))
        assert heat.dtype == np.float16 and overlay.shape == (60, 90, 3)
        assert (row["overlay_width"], row["overlay_height"]) == ("90", "60")
        guided = row["method"].startswith("guided")
        assert heat.shape == ((224, 224, 3) if guided else (112, 112)), "compact: the method's own resolution"
        if guided:
            assert heat.min() >= 0 and heat.max() <= 1
        else:
            assert np.abs(heat).max() == 1, "divided by its largest |value|"
            assert heat.min() >= 0 or row["method"] == "cam", "ReLU'd maps are not negative"
            full = heatmap_at_image_size(tmp_path / "out", row)
            assert full[int(row["peak_y"]), int(row["peak_x"])] >= full.max() - 2e-3
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    assert (report["images"], report["ok"], report["errors"], report["rows"]) == (3, 3, 0, 27)
    assert report["provider"] == "CPUExecutionProvider" and report["images_per_s"] > 0


def test_heatmap_is_the_upsampled_map_and_overlay_the_blend(toy, tmp_path, capsys):
    """The written heatmap is the method's map resized bilinearly to the original size, normalised; the overlay
    blends OpenCV's colormap with the photo at alpha."""
    image = smooth_image(70, 50, seed=3)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), image)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=["layercam"],
                              output={"dir": str(tmp_path / "out"), "heatmaps": {"format": "npy", "size": "original"},
                                      "overlays": {"format": "png", "colormap": "turbo", "alpha": 0.3}})
    assert run_cli(capsys, manifest)[0] == 0
    run = load_manifest(manifest)
    backend = OnnxRuntimeBackend(toy, ["cpu"])
    from onnxcam.runner.inputs.preprocess import to_input
    from onnxcam.runner.model.graph import read_graph_info

    tensor, _ = to_input(image, read_graph_info(toy).preprocessing)
    low = METHODS["layercam"](backend.run(("activations", "gradients"), tensor[None], np.array([-1])), {})[0]
    expected = cv2.resize(low, (50, 70), interpolation=cv2.INTER_LINEAR)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    heat = np.load(run.output_dir / "a.png.layercam.{}.npy".format(read_index(run.output_dir)[0]["target_class"]))
    np.testing.assert_allclose(heat, expected, atol=2e-3)  # float16 storage
    overlay = cv2.imread(str(run.output_dir / read_index(run.output_dir)[0]["overlay_path"]))
    colored = cv2.applyColorMap(np.round(heat.astype(np.float32) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    difference = np.abs(overlay - (0.3 * colored + 0.7 * image))  # heat was stored as float16: a colormap step
    assert difference.max() <= 3 and difference.mean() < 0.5  # rounding to uint8


def test_png_heatmaps_and_no_overlays(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 2)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=["gradcam", "guided_backprop"],
                              output={"dir": str(tmp_path / "out"), "heatmaps": "png", "overlays": False,
                                      "thumbnails": False})
    assert run_cli(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    assert all(row["overlay_path"] == "" for row in rows)
    shapes = {row["method"]: cv2.imread(str(tmp_path / "out" / row["heatmap_path"]), cv2.IMREAD_UNCHANGED).shape
              for row in rows}
    assert shapes == {"gradcam": (112, 112), "guided_backprop": (224, 224, 3)}
    assert all(row["overlay_width"] == row["overlay_height"] == "" for row in rows)
    assert not list((tmp_path / "out").rglob("*.jpg")), "neither overlays nor thumbnails"


# -- targets ------------------------------------------------------------------------------------------------


def test_topk_gives_a_row_per_class(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 5)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=["gradcam", "hirescam"], targets={"topk": 3})
    assert run_cli(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    assert len(rows) == 5 * 3 * 2
    for image in {row["image"] for row in rows}:
        mine = [row for row in rows if row["image"] == image and row["method"] == "gradcam"]
        scores = [float(row["target_score"]) for row in mine]
        assert len({row["target_class"] for row in mine}) == 3 and scores == sorted(scores, reverse=True)
        assert mine[0]["target_class"] == mine[0]["pred_class"]


def test_explicit_classes_by_index_and_name(exported, tmp_path, capsys):
    toy_path = exported("toy_models:relu_net")[1].path
    write_images(tmp_path / "images", 2)
    manifest = write_manifest(tmp_path, toy_path, tmp_path / "images", targets={"classes": [4, "1"]})
    assert run_cli(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    assert sorted(row["target_class"] for row in rows) == ["1", "1", "4", "4"]
    # different targets, different maps
    maps = {row["target_class"]: np.load(tmp_path / "out" / row["heatmap_path"]) for row in rows[:2]}
    assert not np.allclose(*maps.values())


@pytest.mark.slow
def test_class_names_resolve_against_the_labels(exported, tmp_path, capsys):
    path = exported("efficientnet-lite0")[1].path
    write_images(tmp_path / "images", 1)
    manifest = write_manifest(tmp_path, path, tmp_path / "images", targets={"classes": ["tiger cat", 285]})
    assert run_cli(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    assert [(row["target_class"], row["target_label"]) for row in rows] == [("282", "tiger cat"),
                                                                           ("285", "Egyptian cat")]
    manifest = write_manifest(tmp_path, path, tmp_path / "images", targets={"classes": ["tigr cat"]})
    code, out = run_cli(capsys, manifest)
    assert code == 2 and "targets.classes: no class named 'tigr cat'" in out


def test_labels_csv_per_image(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 3)
    (tmp_path / "labels.csv").write_text("image,class\nimg00000.png,2\nimg00001.png,0\n")
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", targets={"labels": "labels.csv"})
    assert run_cli(capsys, manifest)[0] == 0
    rows = {row["image"]: row for row in read_index(tmp_path / "out")}
    assert rows["img00000.png"]["target_class"] == "2" and rows["img00001.png"]["target_class"] == "0"
    assert rows["img00002.png"]["status"] == "error" and "no row for this image in labels.csv" in \
        rows["img00002.png"]["error"]


def test_threshold_on_a_multilabel_model(exported, tmp_path, capsys):
    multilabel = exported("toy_models:relu_net", multilabel=True)[1].path
    write_images(tmp_path / "images", 6)
    manifest = write_manifest(tmp_path, multilabel, tmp_path / "images", targets={"threshold": 0.5})
    assert run_cli(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    from onnxcam.runner.inputs.preprocess import to_input
    from onnxcam.runner.model.graph import read_graph_info

    backend = OnnxRuntimeBackend(multilabel, ["cpu"])
    pre = read_graph_info(multilabel).preprocessing
    for image in sorted(tmp_path.joinpath("images").iterdir()):
        logits = backend.run(("logits",), to_input(cv2.imread(str(image)), pre)[0][None], np.array([-1]))["logits"][0]
        expected = sorted(str(c) for c in np.flatnonzero(1 / (1 + np.exp(-logits)) >= 0.5))
        mine = [row for row in rows if row["image"] == image.name]
        if expected:
            assert sorted(row["target_class"] for row in mine) == expected
        else:
            assert [row["status"] for row in mine] == ["no_target"]
    softmax = write_manifest(tmp_path, exported("toy_models:relu_net")[1].path, tmp_path / "images",
                             targets={"threshold": 0.5})
    code, out = run_cli(capsys, softmax)
    assert code == 2 and "targets.threshold: needs a multi-label (sigmoid) model" in out


# -- bad files ----------------------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def make_awkward_files(folder: Path) -> dict[str, str]:
    """Writes one file per awkward case; returns name -> expected status."""
    folder.mkdir(parents=True)
    picture = smooth_image(40, 60, seed=1)
    good_jpeg = cv2.imencode(".jpg", picture)[1].tobytes()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (folder / "truncated.png").write_bytes(cv2.imencode(".png", picture)[1].tobytes()[:300])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "notes.jpg").write_text("this is not an image\n")
    (folder / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    cv2.imwrite(str(folder / "too big.png"), smooth_image(300, 300, seed=2))
    cv2.imwrite(str(folder / "grey.png"), cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "rgba.png"), cv2.cvtColor(picture, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(folder / "sixteen.png"), picture.astype(np.uint16) * 257)
    Image.fromarray(picture[:, :, ::-1]).convert("CMYK").save(folder / "cmyk.jpg")
    rotated = Image.fromarray(picture[:, :, ::-1])
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(folder / "exif rotated.jpg", exif=exif)
    (folder / "ünïcødé name.jpg").write_bytes(good_jpeg)
    return {"zero.jpg": "error", "truncated.jpg": "error", "truncated.png": "error", "corrupt.png": "error",
            "notes.jpg": "error", "bomb.png": "error", "too big.png": "error", "grey.png": "ok", "rgba.png": "ok",
            "sixteen.png": "ok", "cmyk.jpg": "ok", "exif rotated.jpg": "ok", "ünïcødé name.jpg": "ok"}


def test_bad_files_become_error_rows_and_odd_ones_work(toy, tmp_path, capsys):
    expected = make_awkward_files(tmp_path / "images")
    manifest = write_manifest(tmp_path, toy, {"root": str(tmp_path / "images"), "max_pixels": 50_000},
                              methods=["gradcam", "guided_backprop"])
    code, out = run_cli(capsys, manifest)
    assert code == 0
    assert "13 images, 6 ok, 7 errors" in out.splitlines()[-1]
    rows = read_index(tmp_path / "out")
    by_image = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row)
    assert {image: found[0]["status"] for image, found in by_image.items()} == expected
    for image, status in expected.items():
        assert len(by_image[image]) == (1 if status == "error" else 2)
    errors = {image: found[0]["error"] for image, found in by_image.items() if found[0]["status"] == "error"}
    assert errors["zero.jpg"] == "empty file (0 bytes)"
    assert errors["truncated.jpg"].startswith("truncated JPEG")
    assert "100000x100000 is 10000.0 MP, over images.max_pixels (0.05 MP)" in errors["bomb.png"]
    assert "over images.max_pixels" in errors["too big.png"]
    assert all("\n" not in error for error in errors.values())
    ok = {image: found[0] for image, found in by_image.items() if found[0]["status"] == "ok"}
    assert (ok["exif rotated.jpg"]["width"], ok["exif rotated.jpg"]["height"]) == ("40", "60")  # EXIF applied
    assert (ok["sixteen.png"]["width"], ok["grey.png"]["width"]) == ("60", "60")
    cmyk = cv2.imread(str(tmp_path / "images" / "cmyk.jpg"))
    assert np.abs(cmyk.astype(int) - smooth_image(40, 60, seed=1)).mean() < 8, "CMYK decoded to the right colours"
    unicode_class = ok["ünïcødé name.jpg"]["target_class"]
    assert (tmp_path / "out" / f"ünïcødé name.jpg.gradcam.{unicode_class}.jpg").exists()
    assert not list((tmp_path / "out").rglob("*.partial")), "overlays are renamed into place"


def test_list_entries_cannot_write_outside_the_output_dir(toy, tmp_path, capsys):
    (tmp_path / "deep" / "lists").mkdir(parents=True)
    write_images(tmp_path / "elsewhere", 1)
    write_images(tmp_path / "deep" / "lists" / "local", 1)
    (tmp_path / "deep" / "lists" / "files.txt").write_text(
        "# escaping entries\n../../elsewhere/img00000.png\n" + str(tmp_path / "elsewhere" / "img00000.png")
        + "\nlocal/img00000.png\n../../missing.png\n")
    manifest = write_manifest(tmp_path, toy, {"list": str(tmp_path / "deep" / "lists" / "files.txt")})
    assert run_cli(capsys, manifest)[0] == 0
    rows = read_index(tmp_path / "out")
    absolute = (tmp_path / "elsewhere" / "img00000.png").as_posix().lstrip("/")  # the root is dropped
    assert {row["image"]: row["status"] for row in rows} == {
        "elsewhere/img00000.png": "ok", absolute: "ok", "local/img00000.png": "ok", "missing.png": "error"}
    written = [p for p in tmp_path.rglob("*.gradcam.*")]
    assert written and all(p.is_relative_to(tmp_path / "out") for p in written)


# -- manifest and model errors: one line, exit 2 ---------------------------------------------------------------


@pytest.mark.parametrize("edit,expected", [
    (lambda m: m["images"].update(incldue=["*.png"]), "images.incldue: unknown key; did you mean 'include'?"),
    (lambda m: m["runtime"].update(batch_size="32"), "runtime.batch_size: expected an integer, got a string '32'"),
    (lambda m: m.update(methods=["gradcam", "grdcam++"]), "methods: unknown method 'grdcam++'; did you mean"),
    (lambda m: m.update(model="missing.onnx"), "model: "),
    (lambda m: m.update(targets={"topk": 0}), "targets.topk: expected an integer between 1 and 1000, got 0"),
    (lambda m: m.update(methods=[{"gradcam": {"guided_weight": True}}]), "methods.gradcam.guided_weight: unknown key"),
    (lambda m: m["output"].update(heatmaps="tiff"), "output.heatmaps: expected one of npy, png, none, got 'tiff'"),
    (lambda m: m.pop("output"), "output: missing; this key is required"),
    (lambda m: m["images"].update(list="files.txt"), "images: give exactly one of root"),
    (lambda m: m.update(methods=["occlusion"], occlusion={"patch": 8, "stride": 16}),
     "occlusion: stride 16 is larger than patch 8, which leaves pixels unscored"),
    (lambda m: m.update(scorecam={"batch_size": 8}), "scorecam: options for a method that is not in methods"),
    (lambda m: m.update(methods=[{"occlusion": {"patch": 8}}], occlusion={"patch": 8}),
     "occlusion: options given twice, here and in methods; keep one"),
    (lambda m: m.update(methods=[{"occlusion": {"fill": "grey"}}]),
     "methods.occlusion.fill: expected one of mean, zero, blur, got 'grey'"),
    (lambda m: m.update(evaluate={"metrics": ["average_dorp"]}),
     "evaluate.metrics: unknown metric 'average_dorp'; did you mean 'average_drop'?"),
    (lambda m: m.update(evaluate={"metrics": ["pointing_game"]}), "evaluate.boxes: pointing_game needs a boxes file"),
    (lambda m: m.update(evaluate={"deletion": {"steps": 1}}),
     "evaluate.deletion.steps: expected an integer between 2 and 1000, got 1"),
    (lambda m: m.update(evaluate={"metrics": ["deletion"], "insertion": {"steps": 5}}),
     "evaluate.insertion: options for a metric that is not in evaluate.metrics"),
    (lambda m: m.update(evaluate={"boxes": "nope.csv"}), "evaluate.boxes: "),
])
def test_manifest_mistakes_are_one_line(toy, tmp_path, capsys, edit, expected):
    write_images(tmp_path / "images", 1)
    path = write_manifest(tmp_path, toy, tmp_path / "images")
    import yaml

    manifest = yaml.safe_load(path.read_text())
    edit(manifest)
    path.write_text(yaml.safe_dump(manifest))
    code, out = run_cli(capsys, path)
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"onnxcam run: error: {path}: ")
    assert expected in lines[0]
    if "missing.onnx" in str(manifest.get("model")):
        assert "no such file" in lines[0]
    assert not (tmp_path / "out").exists(), "nothing runs before the manifest is valid"


def test_model_errors_are_one_line(exported, toy, tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    flat = exported("toy_models:flat_head_net")[1].path
    code, out = run_cli(capsys, write_manifest(tmp_path, flat, tmp_path / "images", methods=["cam"]))
    assert code == 2 and "'cam' needs a model whose head is global-average-pool -> linear" in out
    no_guided = exported("toy_models:relu_net", guided=False)[1].path
    code, out = run_cli(capsys, write_manifest(tmp_path, no_guided, tmp_path / "images", methods=["guided_gradcam"]))
    assert code == 2 and "exported with --no-guided; re-export without it" in out
    code, out = run_cli(capsys, write_manifest(tmp_path, toy, tmp_path / "images", methods=["smoothgrad"]))
    assert code == 2 and "'smoothgrad' needs plain_input_gradients" in out and "re-export with --saliency" in out
    code, out = run_cli(capsys, write_manifest(tmp_path, toy, tmp_path / "images", methods=["occlusion"],
                                               occlusion={"patch": 300, "stride": 16}))
    assert code == 2 and "occlusion.patch: 300 is larger than the model input [224, 224]" in out
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    code, out = run_cli(capsys, write_manifest(tmp_path, tmp_path / "junk.onnx", tmp_path / "images"))
    assert code == 2 and len(out.strip().splitlines()) == 1 and "junk.onnx" in out


def test_cpu_only_machine_auto_picks_cpu_and_says_why(toy):
    backend = OnnxRuntimeBackend(toy, "auto", [("logits",)])
    assert backend.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
    if backend.provider == "CPUExecutionProvider":
        assert backend.notes and backend.notes[0].startswith("CUDA not used")
    with pytest.raises(ModelError) if backend.provider == "CPUExecutionProvider" else _no_error():
        OnnxRuntimeBackend(toy, ["cuda"], [("logits",)])


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_cuda_provider_gets_the_precision_and_the_options_asked_for(toy, monkeypatch):
    """What CUDA sessions are opened with, checked without a GPU: CUDA said usable, the sessions asked for are
    noted and opened on the CPU."""
    import onnxruntime as ort
    from onnxcam.runner.model import backend as module

    asked, session = [], ort.InferenceSession

    def on_the_cpu(model, options=None, providers=None, **kwargs):
        asked.append(providers)
        return session(model, options, providers=["CPUExecutionProvider"], **kwargs)

    monkeypatch.setattr(module, "cuda_unavailable", lambda: None)
    monkeypatch.setattr(ort, "InferenceSession", on_the_cpu)
    OnnxRuntimeBackend(toy, ["cuda", "cpu"], [("logits",)], precision="f32", cuda_options={"prefer_nhwc": "1"})
    OnnxRuntimeBackend(toy, "auto", [("logits",)])
    assert asked == [[("CUDAExecutionProvider", {"use_tf32": "0", "prefer_nhwc": "1"}), "CPUExecutionProvider"],
                     [("CUDAExecutionProvider", {"use_tf32": "1"}), "CPUExecutionProvider"]]


@pytest.mark.parametrize(("precision", "tolerance"), [("f32", 1e-4), ("auto", 5e-3)])
def test_cuda_provider_matches_cpu(toy, precision, tolerance):
    """Exercised on a GPU machine (IO binding path); skipped where CUDA cannot run. `auto` lets the convolutions
    run in TF32 (10 bits of mantissa), f32 keeps them in float32."""
    outputs = ("logits", "activations", "gradients", "input_gradients")
    cuda = OnnxRuntimeBackend(toy, "auto", [outputs], precision=precision)
    if cuda.provider != "CUDAExecutionProvider":
        pytest.skip("no usable CUDA provider here: " + "; ".join(cuda.notes))
    assert cuda.precision == {"f32": "f32", "auto": "tf32"}[precision]
    cpu = OnnxRuntimeBackend(toy, ["cpu"])
    batch = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    targets = np.array([-1, 0, 1, 2, 3, 4, -1, 2])
    for name, value in cuda.run(outputs, batch, targets).items():
        expected = cpu.run(outputs, batch, targets)[name]
        error = np.linalg.norm(value - expected) / np.linalg.norm(expected)
        assert error <= tolerance, f"{name}: {error:.1e}"


def test_a_failing_batch_or_write_becomes_error_rows_and_the_run_goes_on(toy, tmp_path):
    from onnxcam.runner.run import Run

    write_images(tmp_path / "images", 9)
    write_images(tmp_path / "images" / "sub", 1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("a file where sub/'s outputs would go")
    manifest = load_manifest(write_manifest(tmp_path, toy, tmp_path / "images", targets={"topk": 2},
                                            runtime={"providers": ["cpu"], "batch_size": 3, "workers": 2}))
    backend = FlakyBackend(OnnxRuntimeBackend(toy, ["cpu"]), 2, "CUDA out of memory\nsecond line")
    tally = Run(manifest, quiet=True, backend=backend).run()
    rows = read_index(tmp_path / "out")
    errors = {row["image"]: row["error"] for row in rows if row["status"] == "error"}
    assert "the model failed on this batch (CPUExecutionProvider: CUDA out of memory second line)" in errors.values()
    assert errors["sub/img00000.png"].startswith("cannot write outputs ([Errno 17] File exists: ")
    assert tally.images == 10 and tally.errors == len(errors) >= 2
    keys = [(row["image"], row["target_class"], row["method"]) for row in rows]
    assert len(keys) == len(set(keys)) and len({row["image"] for row in rows}) == 10
    for image in {row["image"] for row in rows} - set(errors):
        assert sum(row["image"] == image for row in rows) == 2


def test_resuming_with_another_model_or_targets_is_refused(exported, toy, tmp_path, capsys):
    write_images(tmp_path / "images", 2)
    assert run_cli(capsys, write_manifest(tmp_path, toy, tmp_path / "images"))[0] == 0
    other = exported("toy_models:relu_net", multilabel=True)[1].path
    code, out = run_cli(capsys, write_manifest(tmp_path, other, tmp_path / "images"))
    assert code == 2 and "holds a run with another model file; resuming would mix them" in out
    code, out = run_cli(capsys, write_manifest(tmp_path, toy, tmp_path / "images", targets={"topk": 2}))
    assert code == 2 and "holds a run with other targets" in out
    code, out = run_cli(capsys, write_manifest(tmp_path, toy, tmp_path / "images", methods=["gradcam", "layercam"]))
    assert code == 0 and "done: 2 images" in out.splitlines()[-1], "new methods redo the images"
    assert len(read_index(tmp_path / "out")) == 4


def test_activations_write_one_row_and_map_per_channel(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 2)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images",
                              methods=["gradcam", {"activations": {"channels": [3, 0]}}],
                              output={"dir": str(tmp_path / "out"), "heatmaps": "npy", "overlays": False})
    code, printed = run_cli(capsys, manifest, "--quiet")
    assert code == 0, printed
    rows = read_index(tmp_path / "out")
    assert [(row["method"], row["channel"]) for row in rows] == \
        [("gradcam", ""), ("activations.c3", "3"), ("activations.c0", "0")] * 2
    info = read_graph_info(toy)
    for row in rows[1:3]:
        x = to_input(cv2.imread(str(tmp_path / "images" / row["image"])), info.preprocessing)[0]
        a = OnnxRuntimeBackend(toy, ["cpu"]).run(("activations",), x[None], np.array([-1]))["activations"][0]
        stored = np.load(tmp_path / "out" / row["heatmap_path"])
        expected = a[int(row["channel"])]
        np.testing.assert_allclose(stored, expected / np.abs(expected).max(), atol=1e-3)  # float16 on disk


@pytest.mark.parametrize(("options", "expected"), [
    ({"channels": [16]}, "methods: 'activations': the target layer 4 has 16 channels (0..15); pick channels below "
                         "16 or a top of at most 16"),
    ({"top": 3, "channels": [1]}, "methods.activations: give either channels: [151, ...] or top: K"),
    ({}, "methods.activations: give either channels: [151, ...] or top: K"),
    ({"channels": [1, 1]}, "methods.activations: channels [1, 1] lists a channel twice"),
    ({"channels": 3}, "methods.activations.channels: expected a list of integers, got int 3"),
])
def test_activations_mistakes_are_one_line(toy, tmp_path, capsys, options, expected):
    write_images(tmp_path / "images", 1)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", methods=[{"activations": options}])
    code, printed = run_cli(capsys, manifest)
    assert code == 2 and printed.strip().endswith(expected), printed
