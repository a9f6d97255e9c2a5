"""The maintainer web app in real headless Chromium (Playwright), on SQLite and PostgreSQL, with the release models.

One test walks the maintainer's whole job — sign in, create a catalog, upload a folder of photos, fix a label,
review a near-duplicate, publish, see the version, try a photo and see "unknown" for a coin not in the catalog —
and saves a screenshot of each screen (``COINVISION_SCREENSHOT_DIR``, else the test's temp dir). The server sends
its real Content-Security-Policy, so the page is tested under it (no string evaluation in these tests either).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sync_server.config import ServerConfig
from coinvision.sync_server.live import start_local_server

from tests.sync_server.helpers import ROOT, SAMPLE, Server

# Offline and quiet: no QUIC, no sync, no component or background downloads (the CI machine has no network).
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RELEASE = ROOT / "models" / "release"
EURO = SAMPLE / "euro_phone" / "images"


def _chromium() -> str | None:
    path = os.environ.get("COINVISION_CHROMIUM") or "/usr/bin/chromium"
    return path if Path(path).is_file() or shutil.which(path) else None


@pytest.fixture
def web_server(db_url: str, tmp_path: Path) -> Iterator[Server]:
    """A server with the shipped release models (the tiny test models cannot tell coins apart)."""
    if not all((RELEASE / f).is_file() for f in ("segmenter.onnx", "embedder.onnx")):
        pytest.skip("models/release has no ONNX segmenter/embedder")
    cfg = ServerConfig.resolve(data_dir=tmp_path / "data", db_url=db_url, models_dir=RELEASE)
    local = start_local_server(cfg)
    yield Server(local)
    local.stop()


@pytest.fixture
def page(web_server: Server) -> Iterator[object]:
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium binary (set COINVISION_CHROMIUM or apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1200, "height": 900})
            pg.set_default_timeout(30_000)
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            yield pg
            # no script errors and no CSP violations on any screen (failed API calls show up as console errors
            # of status 4xx, which some steps provoke on purpose)
            assert not [e for e in errors if "status of 4" not in e], errors
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("COINVISION_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _photo_folder(tmp_path: Path) -> Path:
    """What a maintainer has on disk: one folder per coin. One 1-euro photo is misfiled under 2e as well."""
    root = tmp_path / "photos"
    for coin in ("1c", "10c", "1e", "2e"):
        (root / coin).mkdir(parents=True)
        for src in sorted((EURO / coin).iterdir())[:2]:
            shutil.copy(src, root / coin / src.name)
    misfiled = sorted((EURO / "1e").iterdir())[0]
    shutil.copy(misfiled, root / "2e" / f"misfiled-{misfiled.name}")
    return root


def _coin(server: Server, coin_id: str) -> requests.Response:
    return server.get(f"/v1/catalogs/euro/coins/{coin_id}")


@pytest.mark.browser
def test_maintainer_whole_job_in_the_browser(web_server: Server, page: object, shots: Path, tmp_path: Path) -> None:
    s, pg = web_server, page
    folder = _photo_folder(tmp_path)

    # sign in: a wrong token is refused with a readable message, the right one opens the (empty) catalogs
    pg.goto(s.url + "/")  # type: ignore[attr-defined]
    pg.wait_for_selector("#signin")  # type: ignore[attr-defined]
    pg.screenshot(path=str(shots / "01-sign-in.png"))  # type: ignore[attr-defined]
    pg.fill("#token", "cv_wrong")  # type: ignore[attr-defined]
    pg.click("#signin button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#signin-error.error")  # type: ignore[attr-defined]
    assert "not valid" in pg.inner_text("#signin-error")  # type: ignore[attr-defined]
    pg.fill("#token", s.local.maintainer_token)  # type: ignore[attr-defined]
    pg.click("#signin button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#catalogs-empty")  # type: ignore[attr-defined]
    pg.screenshot(path=str(shots / "02-catalogs-empty.png"))  # type: ignore[attr-defined]

    # create a catalog: the app goes to its upload tab
    pg.fill("#new-catalog-id", "euro")  # type: ignore[attr-defined]
    pg.fill("#new-catalog-name", "Euro coins")  # type: ignore[attr-defined]
    pg.click("#create-catalog button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#upload-form")  # type: ignore[attr-defined]
    assert "Euro coins" in pg.inner_text("#catalog-title")  # type: ignore[attr-defined]

    # upload a folder of folders: one coin per folder, a result per file
    pg.set_input_files("#upload-folder", str(folder))  # type: ignore[attr-defined]
    assert "9 photo(s) chosen" in pg.inner_text("#upload-chosen")  # type: ignore[attr-defined]
    pg.click("#upload-button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#upload-summary.ok")  # type: ignore[attr-defined]
    assert "9 of 9 photo(s) uploaded" in pg.inner_text("#upload-summary")  # type: ignore[attr-defined]
    assert pg.locator("#upload-results td.result.ok").count() == 9  # type: ignore[attr-defined]
    pg.screenshot(path=str(shots / "03-upload.png"), full_page=True)  # type: ignore[attr-defined]

    # a failed upload creates no coin; an empty label box never overwrites a label
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo")
    pg.fill("#upload-coin-id", "ghost")  # type: ignore[attr-defined]
    pg.set_input_files("#upload-files", str(bad))  # type: ignore[attr-defined]
    pg.click("#upload-button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#upload-summary.error")  # type: ignore[attr-defined]
    assert "JPEG, PNG or WebP" in pg.inner_text("#upload-results tr:last-child td.result")  # type: ignore[attr-defined]
    assert _coin(s, "ghost").status_code == 404

    # the coins list: four coins with thumbnails; fix the label of one
    pg.click("#tab-coins")  # type: ignore[attr-defined]
    pg.wait_for_selector("#coins img[src^='blob:']")  # type: ignore[attr-defined]
    assert pg.locator("#coins tbody tr").count() == 4  # type: ignore[attr-defined]
    pg.screenshot(path=str(shots / "04-coins.png"), full_page=True)  # type: ignore[attr-defined]
    pg.click("#coins tr[data-coin='1e'] a.coin-link")  # type: ignore[attr-defined]
    pg.wait_for_selector("#coin-form")  # type: ignore[attr-defined]
    pg.fill("#coin-label", "1 Euro")  # type: ignore[attr-defined]
    pg.fill("#coin-country", "eurozone")  # type: ignore[attr-defined]
    pg.click("#coin-save")  # type: ignore[attr-defined]
    pg.wait_for_selector("#coin-message.ok")  # type: ignore[attr-defined]
    pg.screenshot(path=str(shots / "05-coin.png"), full_page=True)  # type: ignore[attr-defined]
    assert (_coin(s, "1e").json()["label"], _coin(s, "1e").json()["country"]) == ("1 Euro", "eurozone")

    # one more photo of 1e with the Label box left empty: the label stays "1 Euro" (it became "1e" before)
    pg.click("#tab-upload")  # type: ignore[attr-defined]
    pg.fill("#upload-coin-id", "1e")  # type: ignore[attr-defined]
    pg.set_input_files("#upload-files", str(sorted((EURO / "1e").iterdir())[2]))  # type: ignore[attr-defined]
    pg.click("#upload-button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#upload-summary.ok")  # type: ignore[attr-defined]
    one_euro = _coin(s, "1e").json()
    assert one_euro["label"] == "1 Euro" and one_euro["image_count"] == 3

    # search the coins list
    pg.click("#tab-coins")  # type: ignore[attr-defined]
    pg.fill("#coin-search", "euro")  # type: ignore[attr-defined]
    pg.click("#coin-search-form button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#coins tbody tr:only-child[data-coin='1e']")  # type: ignore[attr-defined]

    # review: the misfiled photo makes 1e and 2e look alike; delete it from 2e
    pg.click("#tab-review")  # type: ignore[attr-defined]
    pg.wait_for_selector("#pairs .pair")  # type: ignore[attr-defined]
    pg.wait_for_selector("#pairs img[src^='blob:']")  # type: ignore[attr-defined]
    assert "100 % alike" in pg.inner_text("#pairs")  # type: ignore[attr-defined]
    pg.screenshot(path=str(shots / "06-review.png"), full_page=True)  # type: ignore[attr-defined]
    second = pg.locator("#pairs .pair figure").nth(1)  # type: ignore[attr-defined]
    assert "2e" in second.inner_text()
    second.locator("button.delete-photo").click()
    pg.click("#confirm-ok")  # type: ignore[attr-defined]
    pg.wait_for_selector("#review-empty")  # type: ignore[attr-defined]
    assert _coin(s, "2e").json()["image_count"] == 2

    # publish with the change summary, then see the version
    pg.click("#tab-publish")  # type: ignore[attr-defined]
    pg.wait_for_selector("#change-summary li")  # type: ignore[attr-defined]
    assert "4 coin(s) added" in pg.inner_text("#change-summary")  # type: ignore[attr-defined]
    pg.click("#publish-button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#publish-result.ok")  # type: ignore[attr-defined]
    assert "Published version 1: 4 coins, 9 photos" in pg.inner_text("#publish-result")  # type: ignore[attr-defined]
    pg.wait_for_selector("#change-title:has-text('since version 1')")  # type: ignore[attr-defined]
    assert "Nothing changed" in pg.inner_text("#change-summary")  # type: ignore[attr-defined]
    pg.screenshot(path=str(shots / "07-publish.png"), full_page=True)  # type: ignore[attr-defined]
    pg.click("#tab-versions")  # type: ignore[attr-defined]
    pg.wait_for_selector("#versions tr[data-version='1']")  # type: ignore[attr-defined]
    pg.screenshot(path=str(shots / "08-versions.png"), full_page=True)  # type: ignore[attr-defined]
    assert [v["version"] for v in s.get("/v1/catalogs/euro/versions").json()["versions"]] == [1]

    # try a photo: a 1-euro photo that was never uploaded is named; a coin from another catalog is "unknown"
    pg.click("#tab-try")  # type: ignore[attr-defined]
    pg.set_input_files("#try-file", str(sorted((EURO / "1e").iterdir())[4]))  # type: ignore[attr-defined]
    pg.click("#try-form button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#verdict.known")  # type: ignore[attr-defined]
    assert "Looks like 1 Euro" in pg.inner_text("#verdict")  # type: ignore[attr-defined]
    pg.wait_for_selector("#matches li.match img")  # type: ignore[attr-defined]
    pg.wait_for_selector("#overlay:not([hidden])")  # type: ignore[attr-defined]
    pg.screenshot(path=str(shots / "09-try-known.png"), full_page=True)  # type: ignore[attr-defined]
    stranger = sorted((SAMPLE / "coins211" / "images" / "107").iterdir())[0]
    pg.set_input_files("#try-file", str(stranger))  # type: ignore[attr-defined]
    pg.click("#try-form button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#verdict.unknown")  # type: ignore[attr-defined]
    verdict = pg.inner_text("#verdict")  # type: ignore[attr-defined]
    threshold = ModelMetadata.read_sidecar(RELEASE / "embedder.onnx").threshold
    assert verdict.startswith("Unknown coin") and f"threshold of {round(100 * threshold)} %" in verdict
    scores = pg.locator("#matches li.match").all_inner_texts()  # type: ignore[attr-defined]
    assert scores and all(t.rstrip().endswith("%") and " -" not in t for t in scores)  # never a negative score
    pg.screenshot(path=str(shots / "10-try-unknown.png"), full_page=True)  # type: ignore[attr-defined]


@pytest.mark.browser
def test_rename_and_delete_a_catalog_with_confirmation(web_server: Server, page: object) -> None:
    s, pg = web_server, page
    for cid in ("keep", "drop"):
        assert s.post("/v1/catalogs", json={"id": cid, "name": cid.title()}).status_code == 201
    pg.goto(s.url + "/")  # type: ignore[attr-defined]
    pg.fill("#token", s.local.maintainer_token)  # type: ignore[attr-defined]
    pg.click("#signin button")  # type: ignore[attr-defined]
    pg.click("tr[data-catalog='keep'] button.rename")  # type: ignore[attr-defined]
    pg.fill("tr[data-catalog='keep'] .rename-input", "Kept coins")  # type: ignore[attr-defined]
    pg.click("tr[data-catalog='keep'] .rename-form button[type=submit]")  # type: ignore[attr-defined]
    pg.wait_for_selector("tr[data-catalog='keep'] a:has-text('Kept coins')")  # type: ignore[attr-defined]

    pg.click("tr[data-catalog='drop'] button.delete")  # type: ignore[attr-defined]
    assert pg.is_disabled("#confirm-ok")  # type: ignore[attr-defined]  # the id must be typed first
    pg.click("#confirm-cancel")  # type: ignore[attr-defined]
    assert s.get("/v1/catalogs/drop").status_code == 200
    pg.click("tr[data-catalog='drop'] button.delete")  # type: ignore[attr-defined]
    pg.fill("#confirm-input", "drop")  # type: ignore[attr-defined]
    pg.click("#confirm-ok")  # type: ignore[attr-defined]
    pg.wait_for_selector("tr[data-catalog='drop']", state="detached")  # type: ignore[attr-defined]
    assert [c["id"] for c in s.get("/v1/catalogs").json()["catalogs"]] == ["keep"]

    pg.click("#sign-out")  # type: ignore[attr-defined]
    pg.wait_for_selector("#signin")  # type: ignore[attr-defined]
    assert pg.evaluate("() => localStorage.length") == 0  # type: ignore[attr-defined]


_DROP_JS = """([names, payloads]) => {
  const dt = new DataTransfer();
  names.forEach((name, i) => {
    const bytes = Uint8Array.from(atob(payloads[i]), (c) => c.charCodeAt(0));
    dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
  });
  return dt;
}"""


@pytest.mark.browser
def test_coin_pages_drag_and_drop_upload_and_coin_delete(web_server: Server, page: object) -> None:
    import base64

    s, pg = web_server, page
    assert s.post("/v1/catalogs", json={"id": "c", "name": "Many"}).status_code == 201
    for i in range(30):
        assert s.put(f"/v1/catalogs/c/coins/coin-{i:02d}", json={"label": f"Coin {i}"}).status_code == 201
    pg.goto(s.url + "/#/catalog/c")  # type: ignore[attr-defined]
    pg.fill("#token", s.local.maintainer_token)  # type: ignore[attr-defined]
    pg.click("#signin button")  # type: ignore[attr-defined]  # signing in opens the page that was asked for
    pg.wait_for_selector("#pager")  # type: ignore[attr-defined]
    assert pg.inner_text("#page-info") == "1–24 of 30"  # type: ignore[attr-defined]
    assert pg.is_disabled("#prev-page")  # type: ignore[attr-defined]
    pg.click("#next-page")  # type: ignore[attr-defined]
    pg.wait_for_selector("#page-info:has-text('25–30 of 30')")  # type: ignore[attr-defined]
    assert pg.locator("#coins tbody tr").count() == 6  # type: ignore[attr-defined]
    assert pg.is_disabled("#next-page")  # type: ignore[attr-defined]

    # drag and drop two photos onto the upload tab
    pg.click("#tab-upload")  # type: ignore[attr-defined]
    pg.fill("#upload-coin-id", "dropped")  # type: ignore[attr-defined]
    pg.fill("#upload-label", "Dropped coin")  # type: ignore[attr-defined]
    photos = sorted((EURO / "2e").iterdir())[:2]
    transfer = pg.evaluate_handle(  # type: ignore[attr-defined]
        _DROP_JS, [[p.name for p in photos], [base64.b64encode(p.read_bytes()).decode() for p in photos]])
    pg.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})  # type: ignore[attr-defined]
    pg.wait_for_selector("#upload-chosen:has-text('2 photo(s) chosen')")  # type: ignore[attr-defined]
    pg.click("#upload-button")  # type: ignore[attr-defined]
    pg.wait_for_selector("#upload-summary.ok")  # type: ignore[attr-defined]
    coin = s.get("/v1/catalogs/c/coins/dropped").json()
    assert (coin["label"], coin["image_count"]) == ("Dropped coin", 2)

    # delete the coin from its page, after confirming
    pg.goto(s.url + "/#/catalog/c/coin/dropped")  # type: ignore[attr-defined]
    pg.wait_for_selector("#coin-photos img[src^='blob:']")  # type: ignore[attr-defined]
    pg.click("#delete-coin")  # type: ignore[attr-defined]
    pg.click("#confirm-ok")  # type: ignore[attr-defined]
    pg.wait_for_selector("#coins")  # type: ignore[attr-defined]
    assert s.get("/v1/catalogs/c/coins/dropped").status_code == 404
    assert not [p for p in s.state.config.images_dir.rglob("*") if p.is_file()]  # its photos are gone from disk
