"""report.html in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) opens the report
of a real run from disk and is used as a person would: gallery, filters, search, sorting, the large view, the
faithfulness and errors tabs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chromium import find_chromium
from report_helpers import read_head
from runner_helpers import read_index, write_images, write_manifest

try:
    from playwright import sync_api as playwright
except ImportError:
    playwright = None
BROWSER = find_chromium()
METHODS = ["gradcam", "saliency", "guided_backprop"]


def missing(what: str) -> None:
    """Skips the tests where `what` is missing, except in CI (CI=true), where `make test` installs it: fails them."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI={os.environ['CI']}, and no {what}", pytrace=False)
    pytest.skip(f"no {what}")


@pytest.fixture(scope="module", autouse=True)
def browser_at_hand():
    if playwright is None:
        missing("Playwright: pip install -e '.[test]'")
    if BROWSER is None:
        missing("Chromium on PATH: apt-get install -y chromium (make test installs it), or set ONNXCAM_CHROMIUM to a "
                "Chromium or Chrome binary")


@pytest.fixture(scope="module")
def report(exported, tmp_path_factory) -> Path:
    """A run over 6 photographs (one in a folder, with characters a URL must escape) and a broken file, top-2
    classes, three methods and three metrics."""
    from onnxcam.runner.cli import main

    folder = tmp_path_factory.mktemp("report")
    toy = exported("toy_models:relu_net", saliency=True)[1].path
    images = folder / "images"
    write_images(images, 5, size=(120, 160))
    write_images(images / "sub dir", 1, size=(90, 60))
    (images / "sub dir" / "img00000.png").rename(images / "sub dir" / "odd #1+%.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    manifest = write_manifest(folder, toy, images, methods=METHODS, targets={"topk": 2},
                              evaluate={"metrics": ["average_drop", "deletion", "insertion"],
                                        "deletion": {"steps": 4}, "insertion": {"steps": 4}})
    assert main(["run", str(manifest), "--quiet"]) == 0
    return folder / "out"


@pytest.fixture(scope="module")
def page(report):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1500, "height": 2400})
        tab.problems = []
        tab.on("console", lambda message: message.type == "error" and tab.problems.append(message.text))
        tab.on("pageerror", lambda error: tab.problems.append(str(error)))
        tab.on("requestfailed", lambda request: tab.problems.append(f"failed: {request.url}"))
        tab.goto((report / "report.html").as_uri())
        tab.wait_for_selector("body[data-loaded=true]", timeout=15_000)
        yield tab
        browser.close()


def shown(page) -> int:
    return int(page.get_attribute("#shown", "data-count"))


def test_gallery_has_one_entry_per_image_and_target_and_every_picture_loads(page, report):
    rows = read_index(report)
    pairs = {(row["image"], row["target_class"]) for row in rows}
    assert len(pairs) == 6 * 2 + 1
    entries = page.eval_on_selector_all(".row", "rows => rows.map(row => [row.dataset.image, row.dataset.target])")
    assert len(entries) == len(pairs) and {tuple(entry) for entry in entries} == pairs
    assert shown(page) == len(pairs)
    sizes = page.eval_on_selector_all(".row img", "images => images.map(i => [i.complete, i.naturalWidth])")
    assert len(sizes) == 12 * (1 + len(METHODS)), "a photo and every method's thumbnail for each ok entry"
    assert all(complete and width > 0 for complete, width in sizes), "every thumbnail found (escaped paths too)"
    sources = page.eval_on_selector_all(".row img", "images => images.map(image => image.src)")
    assert all("/thumbs/" in source for source in sources), "the gallery shows thumbnails, not full overlays"
    header = page.inner_text("#facts")
    assert "top-2" in header and "6 ok, 1 errors" in header and "CPUExecutionProvider" in header
    assert page.problems == []


def test_filters_search_and_sorting_change_what_is_shown(page, report):
    page.select_option("#status-filter", "1")
    page.wait_for_function("document.querySelector('#shown').dataset.count === '1'")
    error = next(row["error"] for row in read_index(report) if row["status"] == "error")
    assert page.inner_text(".row .reason") == error
    page.select_option("#status-filter", "")
    page.fill("#search", "odd #1")
    page.wait_for_function("document.querySelector('#shown').dataset.count === '2'")
    images = page.eval_on_selector_all(".row", "rows => rows.map(row => row.dataset.image)")
    assert set(images) == {"sub dir/odd #1+%.png"}
    page.fill("#search", "")
    page.wait_for_function("document.querySelector('#shown').dataset.count === '13'")

    head, rows = read_head(report), read_index(report)
    top_class = max(head["classCounts"], key=head["classCounts"].get)
    page.select_option("#class-filter", top_class)
    predicted = {(row["image"], row["target_class"]): row["pred_class"] for row in rows if row["status"] == "ok"}
    expected = sum(top_class in pair for pair in ((target, pred) for (_, target), pred in predicted.items()))
    assert 0 < shown(page) == expected == head["classCounts"][top_class] < 13, "predicted or explained as that class"
    page.select_option("#class-filter", "")

    page.select_option("#sort", "metric:deletion:0")  # gradcam's deletion AUC; lower is better, so lowest first
    deletion = {(row["image"], row["target_class"]): float(row["deletion"]) for row in rows
                if row["method"] == "gradcam" and row["deletion"]}
    order = page.eval_on_selector_all(".row", "rows => rows.sort((a, b) => parseFloat(a.style.top) - parseFloat("
                                               "b.style.top)).map(row => [row.dataset.image, row.dataset.target])")
    assert [deletion[tuple(entry)] for entry in order if tuple(entry) in deletion] == sorted(deletion.values())
    assert tuple(order[-1]) not in deletion, "the error entry, without a value, comes last"
    page.select_option("#sort", "index")
    assert page.problems == []


def test_large_view_shows_every_method_its_metrics_and_curves(page, report):
    row = page.locator(".row[data-image='img00002.png'] >> nth=0")
    image, target = row.get_attribute("data-image"), row.get_attribute("data-target")
    row.click()
    page.wait_for_selector("#viewer:not([hidden]) svg.chart")
    title = page.inner_text("#viewer-title")
    assert image in title and f"explained {read_head(report)['labels'][target]} ({target})" in title
    position = int(title.split(" of ")[0].split("· ")[-1])
    cards = page.eval_on_selector_all("#viewer figure", "cards => cards.map(card => card.dataset.method || 'photo')")
    assert cards == ["photo", *METHODS]
    page.wait_for_function("[...document.querySelectorAll('#viewer img')].every(i => i.complete && i.naturalWidth)")
    sources = page.eval_on_selector_all("#viewer img", "images => images.map(image => image.src)")
    assert not any("/thumbs/" in source for source in sources), "the large view shows the photograph and full overlays"
    rows = {row["method"]: row for row in read_index(report) if (row["image"], row["target_class"]) == (image, target)}
    table = page.eval_on_selector_all("#viewer table tr", "trs => trs.map(r => [...r.children].map(c => c.innerText))")
    assert table[0] == ["method", "average_drop ↓", "deletion ↓", "insertion ↑"]
    for line in table[1:]:
        assert float(line[2]) == pytest.approx(float(rows[line[0]]["deletion"]), abs=1e-3)
    assert page.locator("#viewer svg.chart").count() == 2 and page.locator("#viewer svg.chart polyline").count() == 6
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.querySelector('#viewer-title').innerText.includes('{position + 1} of 13')")
    page.keyboard.press("Escape")
    assert page.is_hidden("#viewer")
    assert page.problems == []


def test_faithfulness_and_errors_tabs(page, report):
    page.click("#tabs button[data-tab=faithfulness]")
    table = page.eval_on_selector_all("#faithfulness-tab table tr", "rows => rows.map(r => r.children[0].innerText)")
    assert table == ["method", *METHODS]
    assert page.locator("#faithfulness-tab svg.chart").count() == 2
    page.click("#tabs button[data-tab=errors]")
    assert "1 of 7 images failed" in page.inner_text("#errors-tab")
    page.click("#errors-tab button.link")
    page.wait_for_function("document.querySelector('#shown').dataset.count === '1'")
    assert page.is_visible("#gallery") and page.problems == []
