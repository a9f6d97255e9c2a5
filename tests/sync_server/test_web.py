"""The maintainer/user web page in real headless Chromium: catalogs, versions, upload, query with overlay."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sync_server.helpers import Server, populate, sample_coins

# Offline and quiet: no QUIC, no sync, no component or background downloads (the CI machine has no network).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _chromium() -> str | None:
    path = os.environ.get("COINVISION_CHROMIUM") or "/usr/bin/chromium"
    return path if Path(path).is_file() or shutil.which(path) else None


@pytest.fixture
def page(sqlite_server: Server) -> Iterator[object]:
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary (set COINVISION_CHROMIUM or apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS, headless=True)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(30_000)
            yield pg
        finally:
            browser.close()


@pytest.mark.browser
def test_web_page_lists_uploads_and_queries(sqlite_server: Server, page: object, tmp_path: Path) -> None:
    s = sqlite_server
    coins = sample_coins("euro_phone", n_coins=3, per_coin=1)
    populate(s, "euro", coins[:2])
    assert s.post("/v1/catalogs/euro/publish").status_code == 201
    pg = page
    pg.goto(s.url + "/")  # type: ignore[attr-defined]
    pg.fill("#token", s.local.maintainer_token)  # type: ignore[attr-defined]
    pg.click("#save-token")  # type: ignore[attr-defined]
    pg.wait_for_selector("#catalogs tbody tr")  # type: ignore[attr-defined]
    row = pg.inner_text("#catalogs tbody tr")  # type: ignore[attr-defined]
    assert "euro" in row and "2" in row and "1" in row
    pg.wait_for_selector("#versions li")  # type: ignore[attr-defined]
    assert pg.inner_text("#versions").startswith("v1:")  # type: ignore[attr-defined]

    # upload a reference image for a new coin through the form
    new_id, new_label, new_images = coins[2]
    pg.fill("#coin-id", new_id)  # type: ignore[attr-defined]
    pg.fill("#coin-label", new_label)  # type: ignore[attr-defined]
    pg.set_input_files("#upload-file", str(new_images[0]))  # type: ignore[attr-defined]
    pg.click("#upload-form button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#upload-result:has-text('uploaded')")  # type: ignore[attr-defined]
    assert new_id in pg.inner_text("#upload-result")  # type: ignore[attr-defined]
    coin_ids = [c["coin_id"] for c in s.get("/v1/catalogs/euro").json()["coins"]]
    assert new_id in coin_ids

    # query with that same photo: it comes back first, with a thumbnail and the segmentation overlay
    pg.set_input_files("#query-file", str(new_images[0]))  # type: ignore[attr-defined]
    pg.click("#query-form button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#matches li.match img")  # type: ignore[attr-defined]
    first = pg.inner_text("#matches li.match")  # type: ignore[attr-defined]
    assert new_id in first
    overlay_src = pg.get_attribute("#overlay", "src")  # type: ignore[attr-defined]
    assert overlay_src and overlay_src.startswith("data:image/png;base64,")
    assert pg.evaluate("document.querySelector('#overlay').naturalWidth") > 0  # type: ignore[attr-defined]
    pg.screenshot(path=str(tmp_path / "page.png"), full_page=True)  # type: ignore[attr-defined]


@pytest.mark.browser
def test_web_page_shows_error_for_bad_token(sqlite_server: Server, page: object) -> None:
    pg = page
    pg.goto(sqlite_server.url + "/")  # type: ignore[attr-defined]
    pg.fill("#token", "cv_wrong")  # type: ignore[attr-defined]
    pg.click("#save-token")  # type: ignore[attr-defined]
    pg.wait_for_selector("#status.error")  # type: ignore[attr-defined]
    assert "invalid" in pg.inner_text("#status")  # type: ignore[attr-defined]
