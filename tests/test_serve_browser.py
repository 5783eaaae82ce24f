"""The page of scripts/serve.py in a real browser: headless Chromium (Debian's package, never a downloaded one)
driven by Playwright uploads a real photo, types a prompt, presses the button, and sees the overlay and the
table of detections. Skipped only where /usr/bin/chromium is absent (apt-get install -y chromium)."""
import io
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from serve_support import MAX_DETECTIONS, live_server

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying to reach Google's hosts on this closed network.
CHROMIUM_FLAGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser_page(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's Chromium is not installed: apt-get install -y chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # A persistent context is how Playwright takes a fresh --user-data-dir; it adds --headless and
        # --no-sandbox itself (headless=True, and chromium_sandbox defaults to False).
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1180, "height": 760})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def test_the_page_segments_an_uploaded_photo_and_shows_the_overlay_and_the_table(browser_page, seg_dir, tmp_path):
    page = browser_page
    with live_server(examples_dir=seg_dir, max_detections=MAX_DETECTIONS) as (url, service):
        page.goto(url)
        page.wait_for_selector("#segment:not([disabled])", timeout=30_000)  # the page saw /health say ready
        assert page.is_visible("#random-weights"), "random weights are announced on the page"
        assert page.locator("#examples button").count() == 3

        # An empty prompt: the server's one-line message appears on the page, nothing else changes.
        page.set_input_files("#image", str(seg_dir / "groceries.jpg"))
        page.click("#segment")
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "prompt is empty" in page.text_content("#error") and not page.is_visible("#overlay")

        page.fill("#prompt", "paper bag. car")
        page.fill("#box_threshold", "0.3")
        assert page.text_content("#box_threshold_value") == "0.30"
        with page.expect_response(lambda r: r.url.endswith("/segment"), timeout=180_000) as answer:
            page.click("#segment")
        record = answer.value.json()
        page.wait_for_function("document.getElementById('overlay').naturalWidth > 0")
        assert page.text_content("#error") == ""
        assert record["box_threshold"] == 0.3 and record["image"] == "groceries.jpg"
        assert page.evaluate("[document.getElementById('overlay').naturalWidth, "
                             "document.getElementById('overlay').naturalHeight]") == [800, 534]
        rows = page.locator("#detections tbody tr")
        assert rows.count() == record["num_detections"] >= 1
        first = [cell.strip() for cell in rows.nth(0).locator("td").all_text_contents()]
        det = record["detections"][0]
        assert first == ["0", det["label"], f"{det['box_score']:.3f}", f"{det['mask_score']:.3f}",
                         str(det["mask_area"])]
        assert "RANDOM WEIGHTS" in page.text_content("#summary")

        zip_link = page.get_attribute("#download-zip", "href")
        assert zip_link == f"/results/{record['result_id']}.zip"
        download = page.request.get(url + zip_link)
        with zipfile.ZipFile(io.BytesIO(download.body())) as archive:
            assert "result.json" in archive.namelist() and "masks/0.png" in archive.namelist()

        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
    image = Image.open(shot)
    assert image.size[0] == 1180 and len(set(image.convert("L").getdata())) > 50, "a rendered page, not a blank"
    if os.environ.get("SERVE_SCREENSHOT"):  # how docs/img/serve.png was made
        image.convert("RGB").quantize(colors=128).save(os.environ["SERVE_SCREENSHOT"], optimize=True)
