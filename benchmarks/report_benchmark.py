"""report.html at scale (`make bench-report`): how long a 100,000-image run's report takes to build, to open in
headless Chromium, to filter and sort, and how smoothly its gallery scrolls. A script, not a test; run it with
nothing else running.

    python benchmarks/report_benchmark.py [--images 100000] [--methods 3] [--errors 0.005] [--no-evaluate]
                                          [--folder DIR] [--keep] [--thumbs demo/out/thumbs] [--smoke]

Writes, into a scratch folder, an output.dir as a top-1 run over `--images` 500x375 photographs would leave it:
index.csv with a row per image and method (and, unless --no-evaluate, average drop, deletion and insertion with
21-point curves), a share of error rows, and a thumbnail for every row and photograph (hard links to the demo's
real thumbnails, so the browser decodes real JPEGs; --smoke makes a few of its own from scikit-image's
photographs, so that it needs no `make demo`). Then builds the report (`write_report`, seconds and peak RSS
of this process) and opens it from disk in Chromium through Playwright with a 1600x1000 window:

- first rows: from navigation to the first gallery rows drawn with their thumbnails decoded;
- all data: until every chunk is in (the page is usable before: filters apply to what has arrived);
- filter and sort: status=error, then sort by a metric, each until the count or the first row changes;
- scrolling: the gallery scrolled 60 px per animation frame for 4 s; frames/s, the 95th and 99th percentile frame
  time and the frames over 50 ms.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from _common import ROOT, parse
from chromium import find_chromium
from onnxcam.runner.outputs.index import COLUMNS
from onnxcam.runner.report.build import write_report
from sample_photos import write_photos

ALL_METHODS = ("gradcam", "gradcam++", "layercam", "xgradcam", "hirescam", "eigencam", "cam", "scorecam")
LABELS = ("tabby", "tiger cat", "Egyptian cat", "golden retriever", "espresso", "space shuttle", "balloon", "banana")


def key_of(i: int) -> str:
    return f"photos/{i // 1000:04d}/{i:07d}.jpg"


def own_thumbs(folder: Path) -> Path:
    """Thumbnails as a run writes them (256 px on the long side), of scikit-image's photographs: for each, the
    photograph's and an overlay's (the photograph in false colour); for --smoke, which has no demo to link to."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in write_photos(folder.parent / "photos")[:4]:
        picture = cv2.imread(str(path))
        scale = 256 / max(picture.shape[:2])
        thumb = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{path.stem}.photo.jpg"), thumb)
        cv2.imwrite(str(folder / f"{path.stem}.gradcam.0.jpg"), cv2.applyColorMap(thumb, cv2.COLORMAP_JET))
    return folder


def write_folder(out: Path, thumbs: Path, images: int, methods: tuple[str, ...], errors: float, evaluate: bool) -> int:
    """index.csv and the thumbnails (hard links to those in `thumbs`); returns the number of rows."""
    rng = np.random.default_rng(0)
    sources = sorted(thumbs.glob("*.jpg"))
    photos = [path for path in sources if path.name.endswith(".photo.jpg")]
    overlays = [path for path in sources if not path.name.endswith(".photo.jpg")]
    if not photos or not overlays:
        sys.exit(f"report_benchmark: {thumbs} has no thumbnails; run make demo first")
    rows = 0
    with open(out / "index.csv", "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for i in range(images):
            key = key_of(i)
            base = dict.fromkeys(COLUMNS, "")
            if rng.random() < errors:
                writer.writerow((base | {"image": key, "status": "error",
                                         "error": "corrupt JPEG (premature end of data segment)"}).values())
                rows += 1
                continue
            (out / "thumbs" / key).parent.mkdir(parents=True, exist_ok=True)
            os.link(photos[i % len(photos)], out / "thumbs" / f"{key}.photo.jpg")
            label = int(rng.integers(len(LABELS)))
            score = f"{rng.uniform(0.2, 1):.6g}"
            base |= {"image": key, "status": "ok", "width": 500, "height": 375, "pred_class": label,
                     "pred_label": LABELS[label], "pred_score": score, "target_class": label,
                     "target_label": LABELS[label], "target_score": score, "peak_x": 211, "peak_y": 157,
                     "region_x0": 0, "region_y0": 0, "region_x1": 500, "region_y1": 375, "overlay_width": 500,
                     "overlay_height": 375}
            for method in methods:
                stem = f"{key}.{method}.{label}"
                os.link(overlays[(i + len(stem)) % len(overlays)], out / "thumbs" / f"{stem}.jpg")
                row = base | {"method": method, "heatmap_path": f"{stem}.npy", "overlay_path": f"{stem}.jpg"}
                if evaluate:
                    deletion = np.sort(rng.uniform(0, 1, 21))[::-1]
                    insertion = np.sort(rng.uniform(0, 1, 21))
                    row |= {"average_drop": f"{rng.uniform(0, 100):.6g}", "increase_in_confidence": "0",
                            "deletion": f"{deletion.mean():.6g}", "insertion": f"{insertion.mean():.6g}",
                            "deletion_curve": " ".join(f"{v:.4g}" for v in deletion),
                            "insertion_curve": " ".join(f"{v:.4g}" for v in insertion)}
                writer.writerow(row.values())
                rows += 1
    return rows


MEASURE_SCROLL = """async () => {
  const gallery = document.getElementById('gallery'), times = [];
  const end = performance.now() + 4000;
  await new Promise((done) => {
    const step = (now) => {
      times.push(now);
      gallery.scrollTop += 60;
      if (now < end) requestAnimationFrame(step); else done();
    };
    requestAnimationFrame(step);
  });
  const gaps = times.slice(1).map((t, k) => t - times[k]).sort((a, b) => a - b);
  const at = (q) => gaps[Math.min(gaps.length - 1, Math.floor(q * gaps.length))];
  return {frames: gaps.length, fps: 1000 * gaps.length / (times.at(-1) - times[0]), p95: at(0.95), p99: at(0.99),
          long: gaps.filter((g) => g > 50).length, rows: gallery.scrollTop / 1};
}"""


def browse(report: Path, browser: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    figures = {}
    with sync_playwright() as driver:
        chrome = driver.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chrome.new_page(viewport={"width": 1600, "height": 1000})
        problems = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(report.as_uri(), wait_until="commit")
        page.wait_for_function("[...document.querySelectorAll('.row img')].filter(i => i.complete && i.naturalWidth)"
                               ".length >= 8", polling="raf", timeout=60_000)
        figures["first_rows_s"] = page.evaluate("performance.now()") / 1000
        page.wait_for_selector("body[data-loaded=true]", timeout=120_000)
        figures["all_data_s"] = page.evaluate("performance.now()") / 1000
        figures["entries"] = int(page.get_attribute("#shown", "data-count"))
        start = page.evaluate("performance.now()")
        page.select_option("#status-filter", "1")
        count = "document.querySelector('#shown').dataset.count"
        page.wait_for_function(f"{count} !== '{figures['entries']}'", polling="raf")
        figures["filter_s"] = (page.evaluate("performance.now()") - start) / 1000
        figures["errors_shown"] = int(page.get_attribute("#shown", "data-count"))
        page.select_option("#status-filter", "")
        page.wait_for_function(f"{count} === '{figures['entries']}'")
        first = page.get_attribute(".row >> nth=0", "data-image")
        start = page.evaluate("performance.now()")
        page.select_option("#sort", "metric:deletion:0" if page.locator("option[value='metric:deletion:0']").count()
                           else "pred")
        page.wait_for_function("document.querySelector('.row') && document.querySelector('.row').dataset.image !== "
                               f"'{first}'", polling="raf")
        figures["sort_s"] = (page.evaluate("performance.now()") - start) / 1000
        page.select_option("#sort", "index")
        page.wait_for_timeout(500)
        figures |= {f"scroll_{k}": v for k, v in page.evaluate(MEASURE_SCROLL).items()}
        page.click(".row >> nth=0")
        start = page.evaluate("performance.now()")
        page.wait_for_selector("#viewer:not([hidden]) figure img", timeout=30_000)
        figures["large_view_s"] = (page.evaluate("performance.now()") - start) / 1000
        figures["page_errors"] = len(problems)
        chrome.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--methods", type=int, default=3, choices=range(1, len(ALL_METHODS) + 1))
    parser.add_argument("--errors", type=float, default=0.005, help="share of error rows")
    parser.add_argument("--no-evaluate", action="store_true")
    parser.add_argument("--folder", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the folder")
    parser.add_argument("--thumbs", type=Path, default=ROOT / "demo" / "out" / "thumbs",
                        help="the thumbnails to link to (default: the demo's)")
    args = parse(parser, images=20, methods=2, errors=0.1, thumbs=None)
    browser = find_chromium()
    if browser is None:
        sys.exit("report_benchmark: no Chromium on PATH: apt-get install -y chromium (or set ONNXCAM_CHROMIUM)")
    folder = args.folder or Path(tempfile.mkdtemp(prefix="onnxcam-report-"))
    out = folder / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    thumbs = args.thumbs or own_thumbs(folder / "thumbs")
    rows = write_folder(out, thumbs, args.images, ALL_METHODS[:args.methods], args.errors, not args.no_evaluate)
    print(f"folder: {args.images} images, {rows} rows, index.csv {(out / 'index.csv').stat().st_size / 1e6:.1f} MB, "
          f"written in {time.perf_counter() - start:.1f} s ({out})")
    start = time.perf_counter()
    counts = write_report(out)
    seconds = time.perf_counter() - start
    data = sum(path.stat().st_size for path in (out / "report").iterdir())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    page_kb = (out / "report.html").stat().st_size / 1e3
    files = len(list((out / "report").iterdir()))
    print(f"build: {seconds:.1f} s for {counts.entries} entries; report.html {page_kb:.0f} kB, report/ "
          f"{data / 1e6:.1f} MB in {files} chunk files; peak RSS {peak:.0f} MB")
    figures = browse(out / "report.html", browser)
    print(f"browser (headless Chromium, 1600x1000): first rows with thumbnails {figures['first_rows_s']:.2f} s, "
          f"all {figures['entries']} entries loaded {figures['all_data_s']:.2f} s")
    print(f"  filter status=error: {figures['filter_s'] * 1000:.0f} ms ({figures['errors_shown']} shown); sort by a "
          f"metric: {figures['sort_s'] * 1000:.0f} ms; large view: {figures['large_view_s'] * 1000:.0f} ms")
    print(f"  scrolling 60 px a frame for 4 s: {figures['scroll_fps']:.0f} frames/s, p95 {figures['scroll_p95']:.1f} "
          f"ms, p99 {figures['scroll_p99']:.1f} ms, {figures['scroll_long']} frames over 50 ms; page errors "
          f"{figures['page_errors']}")
    if not args.keep and args.folder is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
