"""report.html for a segmenter's index: each entry explains one class over a region (target_mask, target_share,
mask_file, the region metrics); the report shows the region beside the maps, filters by the explained class, and
builds a classifier's index as before. The index is hand-written here, with small mask PNGs."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from chromium import find_chromium
from onnxcam.runner.outputs.index import COLUMNS
from onnxcam.runner.outputs.stamp import STAMP_NAME
from onnxcam.runner.report import build
from onnxcam.runner.report.build import DATA_DIR, REPORT_NAME, STATE_NAME, write_report
from report_helpers import read_chunks, read_head

try:
    from playwright import sync_api as playwright
except ImportError:
    playwright = None

METHODS = ("gradcam", "layercam")
REGION = ("target_mask", "target_share", "mask_file", "energy_inside")
LABELS = ("background", "disc", "square", "triangle")


def image_rows(k: int, header: tuple[str, ...]) -> list[list[str]]:
    """Image k's rows: an error (k % 5 == 4), or one entry per class present (1 or 2 shapes) with both methods.
    The predicted class (the class on most pixels) is the background, which no entry explains."""
    key = f"scenes/{k:03d}.png"
    blank = {"image": key, "width": "64", "height": "48"}
    if k % 5 == 4:
        return [[(blank | {"status": "error", "error": "not an image"}).get(name, "") for name in header]]
    rows = []
    for target in sorted({1 + k % 3, 1 + (k + 1) % 3} if k % 2 else {1 + k % 3}):
        for m, method in enumerate(METHODS):
            rows.append([(blank | {
                "status": "ok", "pred_class": "0", "pred_label": "background", "pred_score": "0.9",
                "target_class": str(target), "target_label": LABELS[target], "target_score": f"0.{50 + k}",
                "method": method, "overlay_path": f"{key}.{method}.{target}.png",
                "target_mask": "given" if k % 3 == 2 else "predicted", "target_share": f"0.{10 + k:02d}",
                "mask_file": f"masks/{key}.{target}.png", "energy_inside": f"{(k + m) % 4 / 4}"}).get(name, "")
                         for name in header])
    return rows


def write_folder(out: Path, images: range, header: tuple[str, ...]) -> list[list[str]]:
    """output.dir with index.csv, a stamp, and each entry's mask PNG (a white square on black at 64 x 48)."""
    rows = [row for k in images for row in image_rows(k, header)]
    out.mkdir(parents=True)
    (out / "index.csv").write_bytes(csv_bytes([list(header), *rows]))
    (out / STAMP_NAME).write_text(json.dumps({"methods": json.dumps(list(METHODS))}), encoding="utf-8")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:44] = 255
    masks = [row[header.index("mask_file")] for row in rows if "mask_file" in header and row[header.index("mask_file")]]
    for path in set(masks):
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / path), mask)
    return rows


def csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode("utf-8")


def files(out: Path) -> dict[str, bytes]:
    """The report's files: the page without its build time, every chunk, and the state without the file's id."""
    found = {path.name: path.read_bytes() for path in sorted((out / DATA_DIR).iterdir())}
    found[REPORT_NAME] = re.sub(rb'"built":"[^"]*"', b"", (out / REPORT_NAME).read_bytes())
    state = json.loads((out / STATE_NAME).read_text(encoding="utf-8"))
    del state["index"]["file"]
    found[STATE_NAME] = json.dumps(state).encode()
    return found


SEGMENTER = (*COLUMNS, *REGION)
SHUFFLED = (*COLUMNS[:11], "mask_file", *COLUMNS[11:20], "target_share", "energy_inside", *COLUMNS[20:], "target_mask")


@pytest.mark.parametrize("header", [SEGMENTER, SHUFFLED], ids=["appended", "anywhere"])
def test_entries_carry_their_region_and_the_class_filter_counts_explained_classes(tmp_path, header):
    rows = write_folder(tmp_path / "out", range(10), header)
    counts = write_report(tmp_path / "out")
    head, (chunk,) = read_head(tmp_path / "out"), read_chunks(tmp_path / "out")
    entries = {(row[0], row[header.index("target_class")]): row for row in rows}  # one per (image, class)
    assert counts.entries == chunk["n"] == len(entries) == 14 and head["regions"] is True
    ok = [j for j in range(chunk["n"]) if chunk["st"][j] == 0]
    for j in ok:
        row = entries[(chunk["img"][j], str(chunk["tc"][j]))]
        assert chunk["rk"][j] == row[header.index("target_mask")]
        assert chunk["rs"][j] == float(row[header.index("target_share")])
        assert chunk["rf"][j] == row[header.index("mask_file")]
    errors = [j for j in range(chunk["n"]) if chunk["st"][j] == 1]
    assert len(errors) == 2 and all(chunk["rk"][j] is None and chunk["rf"][j] is None for j in errors)
    # each class once per entry that explains it; the predicted background, which none explains, not at all
    explained = [row[header.index("target_class")] for row in entries.values() if row[header.index("target_class")]]
    assert head["classCounts"] == {number: explained.count(number) for number in set(explained)}
    assert "0" not in head["classCounts"] and head["labels"]["0"] == "background"
    values = [float(row[header.index("energy_inside")]) for row in rows
              if row[header.index("status")] == "ok" and row[header.index("method")] == "gradcam"]
    assert "energy_inside" in head["metrics"] and head["higherIsBetter"]["energy_inside"] is True
    assert head["summary"]["gradcam"]["energy_inside"][0] == pytest.approx(np.mean(values))
    assert head["summary"]["gradcam"]["energy_inside"][2] == len(values) == 12


def test_a_classifier_index_has_no_region_data(tmp_path):
    header = tuple(COLUMNS)
    write_folder(tmp_path / "out", range(6), header)
    write_report(tmp_path / "out")
    head, (chunk,) = read_head(tmp_path / "out"), read_chunks(tmp_path / "out")
    assert set(chunk) == {"img", "st", "err", "wh", "pc", "ps", "tc", "ts", "ms", "n", "m"}
    assert "regions" not in head and "energy_inside" not in head["metrics"]
    assert "0" in head["classCounts"], "a classifier's filter counts the predicted class too"
    state = json.loads((tmp_path / "out" / STATE_NAME).read_text(encoding="utf-8"))
    assert state["limits"]["columns"] == list(COLUMNS)


def test_region_columns_left_empty_show_no_regions(tmp_path):
    """A classifier's rows in an index with the region columns (empty): no region column on the page, and the class
    filter counts the predicted class as a classifier's does."""
    out = tmp_path / "out"
    write_folder(out, range(6), SEGMENTER)
    region = [SEGMENTER.index(name) for name in REGION]
    rows = [[cell if k not in region else "" for k, cell in enumerate(row)]
            for row in csv.reader(io.StringIO((out / "index.csv").read_text(encoding="utf-8")))]
    (out / "index.csv").write_bytes(csv_bytes([list(SEGMENTER), *rows[1:]]))
    write_report(out)
    head = read_head(out)
    assert "regions" not in head and "0" in head["classCounts"]


def test_an_index_without_every_classifier_column_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.csv").write_bytes(csv_bytes([[name for name in SEGMENTER if name != "channel"]]))
    with pytest.raises(build.OutputDirError, match="not an index of this onnxcam version"):
        write_report(out)


@pytest.mark.parametrize("first", [0, 3, 7])
def test_a_continued_build_of_a_segmenter_index_writes_what_a_full_build_writes(tmp_path, monkeypatch, first):
    monkeypatch.setattr(build, "CHUNK", 4)
    full, out = tmp_path / "full" / "demo" / "out", tmp_path / "continued" / "demo" / "out"  # one page title
    every = write_folder(full, range(12), SEGMENTER)
    write_report(full)
    done = write_folder(out, range(first), SEGMENTER)
    write_report(out)
    with open(out / "index.csv", "ab") as file:
        file.write(csv_bytes(every[len(done):]))
    write_report(out, incremental=True)
    assert files(out) == files(full) and len(read_chunks(out)) == 5  # 17 entries, 4 a chunk
    assert all("rk" in chunk for chunk in read_chunks(out))


# -- in a browser ---------------------------------------------------------------------------------------------------

BROWSER = find_chromium()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if playwright is None or BROWSER is None:
        pytest.skip("no Playwright or no Chromium (tests/test_report_browser.py says how to get them)")
    out = tmp_path_factory.mktemp("report") / "out"
    write_folder(out, range(10), SEGMENTER)
    write_report(out)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1500, "height": 2400})
        tab.problems = []
        tab.on("pageerror", lambda error: tab.problems.append(str(error)))
        tab.goto((out / "report.html").as_uri())
        tab.wait_for_selector("body[data-loaded=true]", timeout=15_000)
        yield tab
        browser.close()


def shown(page) -> int:
    return int(page.get_attribute("#shown", "data-count"))


def test_the_gallery_shows_each_entry_s_region_and_filters_by_the_explained_class(page):
    assert shown(page) == 14
    assert page.locator("#columns div").all_inner_texts()[:3] == ["image", "photo", "region"]
    regions = page.locator(".row .cell[title=region] img")
    assert regions.count() == 12  # the ok entries (the two errors have no region)
    page.wait_for_function("[...document.querySelectorAll('.cell[title=region] img')].every(i => i.naturalWidth)")
    assert page.locator(".row .line.region").first.inner_text() == "predicted region, 10.0% of the pixels"
    page.select_option("#class-filter", "2")
    targets = {row.get_attribute("data-target") for row in page.locator(".row").all()}
    assert targets == {"2"} and shown(page) == 3  # square: images 1, 3, 7 (the background, predicted, is no option)
    page.select_option("#class-filter", "")
    page.select_option("#sort", "share")
    assert page.locator(".row").first.get_attribute("data-image") == "scenes/008.png"  # the largest share, 0.18
    page.locator(".row").first.click()
    card = page.locator("#viewer-body figure[data-region=true]")
    assert card.count() == 1 and "given region, 18.0% of the pixels" in card.inner_text()
    assert "given region, 18.0% of the pixels" in page.inner_text("#viewer-title")
    assert page.problems == []
