"""Big photographs: memory bounded by runtime.memory_budget, JPEGs decoded at reduced size, overlays capped,
compact heatmaps placed by index.csv's region (and the one-liner of docs/outputs.md giving back the full-size map)."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from onnxcam.runner.cli import main
from onnxcam.runner.costs import Costs
from onnxcam.runner.engines.local import LocalEngine
from onnxcam.runner.inputs.decode import decode_image, header_size, peek
from onnxcam.runner.inputs.listing import ImageRef
from onnxcam.runner.model.graph import Preprocessing, read_graph_info
from onnxcam.runner.outputs import render
from onnxcam.runner.size import Size
from onnxcam.runner.stages import Stages
from onnxcam.runner.stages.items import BatchResult, DecodedImage, ImageResult
from onnxcam.runner.stages.read import ReadStage
from PIL import Image
from runner_helpers import heatmap_at_image_size, read_index, smooth_image, write_images, write_manifest

PEAK = ("import re, sys; from onnxcam.runner.cli import main; rc = main(['run', sys.argv[1], '--quiet']); "
        "print('VmHWM', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(rc)")


@pytest.fixture(scope="module")
def toy(exported) -> Path:
    return exported("toy_models:relu_net")[1].path


def big_picture(width: int, height: int, seed: int) -> np.ndarray:
    picture = cv2.resize(smooth_image(height // 50, width // 50, seed), (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.add(picture, np.random.default_rng(seed).integers(0, 8, picture.shape, np.uint8))


def peak_rss_mib(manifest: Path) -> tuple[float, str]:
    done = subprocess.run([sys.executable, "-c", PEAK, str(manifest)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(re.search(r"VmHWM (\d+)", done.stdout).group(1)) / 1024, done.stdout


@pytest.mark.slow
def test_48_mp_jpegs_and_a_16_bit_tiff_stay_within_the_budget(toy, tmp_path):
    (tmp_path / "big").mkdir()
    for seed in range(2):
        cv2.imwrite(str(tmp_path / "big" / f"camera{seed}.jpg"), big_picture(8000, 6000, seed),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    tiff = (big_picture(6708, 4472, 7).astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "big" / "scan.tif"), tiff, [cv2.IMWRITE_TIFF_COMPRESSION, 5])
    del tiff
    write_images(tmp_path / "small", 1)
    budget = 600
    runtime = {"providers": ["cpu"], "batch_size": 8, "workers": 4, "memory_budget": f"{budget}MB"}
    methods = ["gradcam", "layercam", "guided_backprop"]
    baseline, _ = peak_rss_mib(write_manifest(tmp_path / "small", toy, tmp_path / "small", methods=methods,
                                              runtime=runtime))
    manifest = write_manifest(tmp_path, toy, tmp_path / "big", methods=methods, runtime=runtime)
    peak, printed = peak_rss_mib(manifest)
    print(f"peak RSS: one small image {baseline:.0f} MiB, 2 x 48 MP JPEG + 30 MP 16-bit TIFF {peak:.0f} MiB "
          f"(budget {budget} MiB)")
    assert peak <= baseline + budget, f"{peak:.0f} MiB > {baseline:.0f} MiB + {budget} MiB"
    rows = read_index(tmp_path / "out")
    assert len(rows) == 3 * 3 and {row["status"] for row in rows} == {"ok"}, printed
    for row in rows:
        width, height = int(row["width"]), int(row["height"])
        assert (width, height) in ((8000, 6000), (6708, 4472))
        assert (row["region_x0"], row["region_y0"], row["region_x1"], row["region_y1"]) == \
            ("0", "0", str(width), str(height))
        # JPEGs decoded at 1/4 (2000 px, drawn at that size rather than upscaled); the TIFF resized to the cap
        assert max(int(row["overlay_width"]), int(row["overlay_height"])) == (2048 if width == 6708 else 2000)
        overlay = cv2.imread(str(tmp_path / "out" / row["overlay_path"]))
        assert overlay.shape == (int(row["overlay_height"]), int(row["overlay_width"]), 3)
        assert 0 <= int(row["peak_x"]) < width and 0 <= int(row["peak_y"]) < height
        heatmap = tmp_path / "out" / row["heatmap_path"]
        assert heatmap.stat().st_size < (400_000 if row["method"] == "guided_backprop" else 30_000), "not 96 MB"
    code = subprocess.run([sys.executable, "-m", "onnxcam.runner.cli", "run", str(manifest)], capture_output=True,
                          text=True, timeout=300)
    assert "done: 0 images (3 already done)" in code.stdout.splitlines()[-1]
    assert len(read_index(tmp_path / "out")) == 9, "a resume adds nothing twice"


def test_compact_heatmaps_give_back_the_full_size_map(toy, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "wide.jpg"), big_picture(3000, 2000, 3), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(tmp_path / "images" / "small.png"), smooth_image(90, 120, 4))
    methods = ["gradcam", "hirescam", "guided_backprop"]
    (tmp_path / "compact").mkdir()
    (tmp_path / "full").mkdir()
    compact = write_manifest(tmp_path / "compact", toy, tmp_path / "images", methods=methods)
    full = write_manifest(tmp_path / "full", toy, tmp_path / "images", methods=methods,
                          output={"dir": str(tmp_path / "full" / "out"), "heatmaps": {"size": "original"},
                                  "overlays": {"max_side": "original"}})
    assert main(["run", str(compact), "--quiet"]) == 0 and main(["run", str(full), "--quiet"]) == 0
    compact_rows, full_rows = read_index(tmp_path / "compact" / "out"), read_index(tmp_path / "full" / "out")
    for mine, old in zip(compact_rows, full_rows, strict=True):
        assert (mine["image"], mine["method"], mine["target_class"]) == (old["image"], old["method"],
                                                                         old["target_class"])
        stored = np.load(tmp_path / "compact" / "out" / mine["heatmap_path"])
        reference = np.load(tmp_path / "full" / "out" / old["heatmap_path"]).astype(np.float32)
        assert reference.shape[:2] == (int(old["height"]), int(old["width"]))
        if mine["method"] == "guided_backprop":
            assert stored.shape == (224, 224, 3)
            continue
        assert stored.shape == read_graph_info(toy).activation_shape[1:], "the map at the target layer's resolution"
        assert np.abs(heatmap_at_image_size(tmp_path / "compact" / "out", mine) - reference).max() <= 1e-3
        if mine["image"] == "small.png":
            assert (mine["peak_x"], mine["peak_y"]) == (old["peak_x"], old["peak_y"])
            assert (mine["overlay_width"], mine["overlay_height"]) == ("120", "90")
        else:
            assert (mine["overlay_width"], mine["overlay_height"]) == ("2048", "1365")
            x, y = int(mine["peak_x"]), int(mine["peak_y"])
            assert reference[y, x] >= 0.99, "the peak found at the drawn size is the maximum at the full size"


def test_reduced_decoding_keeps_the_full_size_and_the_orientation(tmp_path):
    picture = big_picture(1600, 1200, 5)
    rotated = Image.fromarray(picture[:, :, ::-1])
    exif = rotated.getexif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    rotated.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    asked = []

    def quarter(size: Size) -> int:
        asked.append(size)
        return 4

    shown = Size(height=1600, width=1200)
    image, size = decode_image(tmp_path / "rotated.jpg", 10**9, quarter)
    assert asked == [shown] and size == shown and image.shape == (400, 300, 3), "sizes as shown"
    full, full_size_ = decode_image(tmp_path / "rotated.jpg", 10**9)
    assert full_size_ == shown and full.shape == (1600, 1200, 3)
    small = cv2.resize(full, (300, 400), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - image).mean() < 3, "the reduced decode is the same picture"
    cv2.imwrite(str(tmp_path / "scan.tif"), picture.astype(np.uint16) * 257)
    assert header_size((tmp_path / "scan.tif").read_bytes()) == Size(height=1200, width=1600)
    assert peek(tmp_path / "scan.tif") == (False, (1200, 1600)), "its directory lies at the end of the file"
    assert peek(tmp_path / "rotated.jpg") == (True, shown)
    square = Image.fromarray(big_picture(4000, 3996, 6)[:, :, ::-1])
    square.save(tmp_path / "square.jpg", exif=exif, quality=80)
    assert decode_image(tmp_path / "square.jpg", 10**9, lambda size: 8)[1] == Size(height=4000, width=3996)
    assert ReadStage(PRE, 10**9, 2048, keep_pixels=True).memory(ImageRef("zero", str(zero_png(tmp_path)))) == 1 << 20


PRE = Preprocessing(size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize="center_crop")


def zero_png(folder: Path) -> Path:
    """A PNG whose header says 0 x 0 pixels."""
    path = folder / "zero.png"
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)))
    return path


class _Stages:
    """Stand-in stages that record the bytes held by images between their read and their rows."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes, self.held, self.most, self.alone = sizes, 0, 0, []

    def memory(self, ref: ImageRef) -> int:
        return self.sizes[ref.key]

    def read(self, ref: ImageRef) -> DecodedImage:
        self.held += self.sizes[ref.key]
        self.most = max(self.most, self.held)
        if self.held == self.sizes[ref.key]:
            self.alone.append(ref.key)
        return DecodedImage(ref, tensor=np.zeros(1))

    def explain(self, images: list[DecodedImage]) -> BatchResult:
        return BatchResult([ImageResult(image) for image in images], Costs())

    def write(self, result: ImageResult) -> list[dict[str, object]]:
        return [{"image": result.decoded.ref.key, "status": "ok"}]


def test_the_engine_keeps_what_is_in_flight_within_the_budget():
    sizes = {f"{k:02d}": 100 for k in range(30)} | {"huge": 1000}
    stand_in = _Stages(sizes)
    stages = Stages(read=_Read(stand_in), explain=stand_in.explain, write=stand_in.write)
    rows = []

    class Sink:
        def add_rows(self, found):
            rows.extend(found)
            stand_in.held -= sizes[found[0]["image"]]

        def add_costs(self, costs):
            pass

    order = [*sorted(k for k in sizes if k != "huge")[:10], "huge", *sorted(k for k in sizes if k != "huge")[10:]]
    refs = iter(ImageRef(key, key) for key in order)
    assert LocalEngine(stages, batch_size=8, workers=2, memory_budget=350).run(refs, Sink()) is False
    assert sorted(row["image"] for row in rows) == sorted(sizes)
    assert stand_in.most == 1000 and "huge" in stand_in.alone, "too big for the budget: it runs alone"
    stand_in.most = 0
    refs = iter(ImageRef(key, key) for key in sorted(k for k in sizes if k != "huge"))
    LocalEngine(stages, batch_size=8, workers=2, memory_budget=350).run(refs, Sink())
    assert stand_in.most <= 350


class _Read:
    def __init__(self, stand_in: _Stages):
        self.stand_in = stand_in

    def __call__(self, ref: ImageRef) -> DecodedImage:
        return self.stand_in.read(ref)

    def memory(self, ref: ImageRef) -> int:
        return self.stand_in.memory(ref)


@pytest.mark.parametrize("runtime,heatmaps,overlays,expected", [
    ({"memory_budget": "lots"}, None, None,
     "runtime.memory_budget: expected a size such as 2GB, 512MB or a number of bytes, got 'lots'"),
    ({"memory_budget": "10MB"}, None, None, "runtime.memory_budget: '10MB' is below the least useful budget, 64 MB"),
    ({}, {"size": "huge"}, None, "output.heatmaps.size: expected one of model, original, got 'huge'"),
    ({}, "tiff", None, "output.heatmaps: expected one of npy, png, none, got 'tiff'"),
    ({}, None, {"max_side": "big"}, "output.overlays.max_side: expected a number of pixels or original, got a string"),
    ({"memory_budget": "1e400"}, None, None, "runtime.memory_budget: expected a size such as 2GB"),
])
def test_budget_and_size_mistakes_are_one_line(toy, tmp_path, capsys, runtime, heatmaps, overlays, expected):
    write_images(tmp_path / "images", 1)
    output = {"dir": str(tmp_path / "out")} | ({"heatmaps": heatmaps} if heatmaps else {}) | (
        {"overlays": overlays} if overlays else {})
    manifest = write_manifest(tmp_path, toy, tmp_path / "images", output=output,
                              runtime={"providers": ["cpu"]} | runtime)
    assert main(["run", str(manifest)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_a_folder_of_the_earlier_layout_is_refused(toy, tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    manifest = write_manifest(tmp_path, toy, tmp_path / "images")
    assert main(["run", str(manifest), "--quiet"]) == 0
    stamp = tmp_path / "out" / ".onnxcam-run.json"
    earlier = json.loads(stamp.read_text())
    del earlier["layout"]  # as onnxcam 0.1 wrote it
    stamp.write_text(json.dumps(earlier))
    capsys.readouterr()
    assert main(["run", str(manifest)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "holds a run with another output layout (an earlier onnxcam)" in lines[0], lines
    assert yaml.safe_load(manifest.read_text())["output"]["dir"] == str(tmp_path / "out")


@pytest.mark.parametrize("kind", ["above zero", "signed"])
def test_the_one_liner_gives_the_drawn_heatmap_for_a_centre_crop(kind, tmp_path):
    """Compact maps keep 0 where it is (they are divided by their largest |value|), so padding with zeros outside
    the region and min-max scaling gives the heatmap drawn at the image's size, also for maps whose minimum is
    not 0 (saliency, occlusion, cam)."""
    rng = np.random.default_rng(1)
    map_ = (rng.uniform(0.3, 1.0, (7, 7)) if kind == "above zero" else rng.normal(0, 1, (7, 7))).astype(np.float32)
    region, width, height = (80, 0, 560, 480), 640, 480
    drawn = render.heatmap(map_, region, Size(height, width))
    np.save(tmp_path / "m.npy", render.compact(map_, guided=False).astype(np.float16))
    row = {"heatmap_path": "m.npy", "width": str(width), "height": str(height)} | {
        f"region_{c}": str(v) for c, v in zip(("x0", "y0", "x1", "y1"), region, strict=True)}
    assert np.abs(heatmap_at_image_size(tmp_path, row) - drawn).max() <= 1e-3
