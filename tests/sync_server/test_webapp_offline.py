"""The offline phone web app (``/app/``) in real headless Chromium, against a real ``coinvision serve``.

A phone viewport (390x844, touch) with a fake camera (Chromium's file-backed capture, fed a y4m made here from a
sample photo): the app downloads the release ONNX models and the signed catalog pack once (the SDK's SyncClient
verifies the manifest in the browser), then the network is switched off (``context.set_offline(True)``) and the
page reloaded — the service worker serves the app — and every recognition must name the same top-1 coin (and the
same unknown verdict) as the Python reference (``coinvision.sdk.Recognizer``, ONNX models, the same pack bytes):
photos picked from files, a camera capture, and both-sides mode (``recognizePair`` vs ``recognize_pair``).

Skips, with the reason, without Chromium, Playwright, the release ONNX models, or the SDK's browser build
(``cd sdk_js && npm ci && npm run build``).
"""

from __future__ import annotations

import html
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from coinvision.sync_server.webapp_routes import BUILD_COMMAND, SDK_FILES, sdk_path
from PIL import Image

from tests.sync_server.helpers import ROOT, SAMPLE

RELEASE = ROOT / "models" / "release"
EURO = SAMPLE / "euro_phone" / "images"
COINS211 = SAMPLE / "coins211" / "images"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]
REFERENCES_PER_COIN = 2  # the first photos of each coin go into the catalog; later ones are the queries
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.browser


def _chromium() -> str:
    path = os.environ.get("COINVISION_CHROMIUM") or "/usr/bin/chromium"
    if not (Path(path).is_file() or shutil.which(path)):
        pytest.skip("no Chromium binary (set COINVISION_CHROMIUM or apt-get install chromium)")
    return path


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "coinvision.cli.main", *args], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, f"coinvision {' '.join(args)} failed:\n{out.stderr}"
    return out.stdout.strip().splitlines()[-1]


@dataclass
class Served:
    url: str
    maintainer: str
    device: str
    pack: Path  # the published pack's bytes, as devices get them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _euro_photos(coin: str) -> list[Path]:
    return sorted((EURO / coin).iterdir())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``coinvision serve`` with the release models and a published 8-coin euro catalog."""
    if not all((RELEASE / f).is_file() for f in ("segmenter.onnx", "embedder.onnx")):
        pytest.skip("models/release has no ONNX segmenter/embedder")
    missing = [name for name in SDK_FILES if sdk_path(name) is None]
    if missing:
        pytest.skip(f"the SDK's browser build is missing ({', '.join(missing)}); run `{BUILD_COMMAND}`")
    tmp = tmp_path_factory.mktemp("webapp")
    data = tmp / "data"
    maintainer = _cli("token", "create", "--scope", "maintainer", "--data-dir", str(data))
    device = _cli("token", "create", "--scope", "device", "--data-dir", str(data))
    port = _free_port()
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "coinvision.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data), "--models", str(RELEASE)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()
            try:
                if requests.get(url + "/v1/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the server did not answer within 120 s"
            time.sleep(0.3)
        auth = {"Authorization": f"Bearer {maintainer}"}
        r = requests.post(url + "/v1/catalogs", json={"id": "euro", "name": "Euro coins"}, headers=auth, timeout=30)
        assert r.status_code == 201, r.text
        for coin in sorted(p.name for p in EURO.iterdir()):
            r = requests.put(f"{url}/v1/catalogs/euro/coins/{coin}", json={"label": f"{coin} euro coin"},
                             headers=auth, timeout=30)
            assert r.ok, r.text
            files = [("image", (p.name, p.read_bytes(), "image/jpeg"))
                     for p in _euro_photos(coin)[:REFERENCES_PER_COIN]]
            r = requests.post(f"{url}/v1/catalogs/euro/coins/{coin}/images", files=files, headers=auth, timeout=300)
            assert r.status_code == 201, r.text
        r = requests.post(f"{url}/v1/catalogs/euro/publish", json={}, headers=auth, timeout=300)
        assert r.ok, r.text
        manifest = requests.get(f"{url}/v1/catalogs/euro/manifest", headers={"Authorization": f"Bearer {device}"},
                                timeout=30).json()["payload"]
        pack = requests.get(url + manifest["pack"]["url"], headers={"Authorization": f"Bearer {device}"}, timeout=30)
        assert pack.ok, pack.text
        (tmp / "catalog.pack").write_bytes(pack.content)
        yield Served(url, maintainer, device, tmp / "catalog.pack")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _y4m(photo: Path, out: Path, frames: int = 2) -> np.ndarray:
    """Write a y4m (I420, BT.601 studio range) showing ``photo``; return the RGB frame a player decodes from it.

    The camera frame is the photo after a YUV 4:2:0 round trip, so the Python reference is run on that frame (not
    the original file): on a photo whose two best coins are within 0.001 of each other the round trip alone can
    swap them."""
    rgb = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float64)
    h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    rgb = rgb[:h, :w]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    u8 = lambda c: np.clip(np.rint(c), 0, 255)  # noqa: E731
    sub = lambda c: u8(c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)))  # noqa: E731 - 2x2 chroma average
    y = u8(16 + 0.257 * r + 0.504 * g + 0.098 * b)
    u = sub(128 - 0.148 * r - 0.291 * g + 0.439 * b)
    v = sub(128 + 0.439 * r - 0.368 * g - 0.071 * b)
    planes = b"".join(p.astype(np.uint8).tobytes() for p in (y, u, v))
    out.write_bytes(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode()
                    + b"".join(b"FRAME\n" + planes for _ in range(frames)))
    uu, vv = (c.repeat(2, 0).repeat(2, 1) - 128 for c in (u, v))
    luma = 1.164 * (y - 16)
    return u8(np.stack([luma + 1.596 * vv, luma - 0.392 * uu - 0.813 * vv, luma + 2.017 * uu], -1)).astype(np.uint8)


QUERIES = [_euro_photos(c)[REFERENCES_PER_COIN] for c in ("1c", "10c", "1e", "2e", "50c")]
CAMERA_PHOTO = _euro_photos("20c")[REFERENCES_PER_COIN + 1]
PAIR = (_euro_photos("2e")[REFERENCES_PER_COIN + 1], _euro_photos("2e")[REFERENCES_PER_COIN + 2])
FOREIGN = sorted(next(iter(sorted(COINS211.iterdir()))).iterdir())[0]  # a coin the euro catalog does not hold


def _wait_state(page: object, state: str, timeout_ms: int = 120_000) -> None:
    """Wait for the app's ``body[data-state]`` to become ``state``; fail with the page's error otherwise."""
    # selectors, not wait_for_function: the page's CSP forbids evaluating strings, and the test obeys it too
    page.wait_for_selector(f"body[data-state={state}], body[data-state=error]", state="attached", timeout=timeout_ms)
    got = page.evaluate("() => document.body.dataset.state")
    assert got == state, page.inner_text("#error")


def _result(page: object) -> tuple[str, bool, list[str]]:
    verdict = page.locator("#verdict")
    ids = page.eval_on_selector_all("#matches li", "els => els.map(e => e.dataset.coinId)")
    return verdict.get_attribute("data-coin-id") or "", verdict.get_attribute("data-unknown") == "true", ids


def _pick(page: object, side: int, photo: Path) -> tuple[str, bool, list[str]]:
    page.evaluate("() => { document.body.dataset.state = 'waiting'; }")
    page.locator(f".side[data-side='{side}'] .file-input").set_input_files(str(photo))
    _wait_state(page, "done")
    return _result(page)


def test_phone_app_downloads_once_then_recognizes_offline_like_the_python_reference(
        served: Served, tmp_path: Path) -> None:
    from coinvision.sdk import Recognizer

    reference = Recognizer.from_dir(RELEASE, runtime="onnx", pack=served.pack)
    expected = {p: reference.recognize(p) for p in [*QUERIES, FOREIGN]}
    expected_pair = reference.recognize_pair(*PAIR)
    shots = Path(os.environ.get("COINVISION_SCREENSHOT_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    sync_api = pytest.importorskip("playwright.sync_api")
    exe = _chromium()
    camera = tmp_path / "camera.y4m"
    expected_camera = reference.recognize(_y4m(CAMERA_PHOTO, camera))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True,
                                     args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={camera}"])
        try:
            context = browser.new_context(viewport=PHONE, device_scale_factor=3, is_mobile=True, has_touch=True,
                                          permissions=["camera"])
            page = context.new_page()
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            # --- online, once: the shared link fills the form; download with progress; the PWA parts are there
            page.goto(f"{served.url}/app/#catalog=euro&token={served.device}")
            _wait_state(page, "setup")
            assert "#" not in page.url  # the token left the address bar
            assert page.locator("#download-size").inner_text().startswith("Models: ")
            page.screenshot(path=str(shots / "webapp_1_setup.png"))

            # a manifest altered on the way (the network is the boundary faked here) is refused by the SDK's
            # signature check in the browser, and nothing is kept
            def tamper(route: object) -> None:
                doc = route.fetch().json()
                doc["payload"]["version"] += 1
                route.fulfill(json=doc)

            page.route("**/v1/catalogs/euro/manifest", tamper)
            page.get_by_role("button", name="Download").click()
            _wait_state(page, "error")
            assert "signature does not verify" in page.inner_text("#error")
            assert page.evaluate("() => localStorage.length") == 0
            page.unroute("**/v1/catalogs/euro/manifest")

            page.get_by_role("button", name="Download").click()
            _wait_state(page, "ready", timeout_ms=300_000)
            assert "version 1: 8 coins" in page.inner_text("#catalog-info")
            manifest = page.evaluate("() => fetch('/app/manifest.webmanifest').then(r => r.json())")
            assert manifest["start_url"] == "/app/" and {i["sizes"] for i in manifest["icons"]} >= {"192x192",
                                                                                                   "512x512"}
            assert page.evaluate("() => navigator.serviceWorker.ready.then(r => !!r.active)")

            # --- no network from here on: a reload comes from the service worker, the data from the caches
            context.set_offline(True)
            page.reload()
            _wait_state(page, "ready")
            assert page.inner_text("#net") == "offline"
            assert page.evaluate("() => navigator.serviceWorker.controller !== null")
            assert requests.get(served.url + "/v1/health", timeout=5).ok  # the server is up: the browser is offline

            for photo in QUERIES:
                top1, unknown, ids = _pick(page, 0, photo)
                want = expected[photo]
                assert (top1, unknown) == (want.matches[0].coin_id, want.unknown), (photo, ids, want)
                assert page.locator("#matches li img").first.get_attribute("src").startswith("blob:")
            page.screenshot(path=str(shots / "webapp_2_result.png"), full_page=True)

            top1, unknown, _ = _pick(page, 0, FOREIGN)
            assert (top1, unknown) == (expected[FOREIGN].matches[0].coin_id, expected[FOREIGN].unknown)
            if unknown:
                assert page.inner_text("#verdict").startswith("Unknown coin")
                page.screenshot(path=str(shots / "webapp_3_unknown.png"), full_page=True)

            # --- the camera (Chromium's fake device plays the y4m)
            page.evaluate("() => { document.body.dataset.state = 'waiting'; }")
            page.locator(".side[data-side='0']").get_by_role("button", name="Take photo").click()
            page.wait_for_selector("body[data-camera=on]", state="attached")
            page.get_by_role("button", name="Capture").click()
            _wait_state(page, "done")
            top1, unknown, ids = _result(page)
            want = expected_camera
            assert (top1, unknown) == (want.matches[0].coin_id, want.unknown), (ids, want)

            # --- both sides
            page.get_by_label("Both sides").check()
            page.locator(".side[data-side='0'] .file-input").set_input_files(str(PAIR[0]))
            top1, unknown, ids = _pick(page, 1, PAIR[1])
            assert (top1, unknown) == (expected_pair.matches[0].coin_id, expected_pair.unknown), (ids, expected_pair)
            page.screenshot(path=str(shots / "webapp_4_pair.png"), full_page=True)

            # a phone screen: nothing wider than the viewport
            assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
            assert not errors, errors
        finally:
            browser.close()


def test_app_without_the_sdk_build_names_the_build_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An app served without the SDK build is a readable 503 naming the command, not a blank page."""
    from coinvision.sync_server.app import create_app

    monkeypatch.setenv("COINVISION_WEBAPP_SDK_DIR", str(tmp_path / "empty"))
    app = create_app(data_dir=tmp_path / "data", models_dir=RELEASE)
    resp = app.test_client().get("/app/")
    assert resp.status_code == 503
    assert BUILD_COMMAND in html.unescape(resp.get_data(as_text=True))
    assert resp.headers["Content-Type"].startswith("text/html")


def test_app_routes_serve_the_build_the_models_and_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What the browser test relies on, without a browser: files, types, the app's CSP, config.json's facts."""
    import hashlib

    from coinvision.sync_server.app import create_app
    from coinvision.sync_server.signing import load_or_create_key, public_key_b64

    if not (RELEASE / "embedder.onnx").is_file():
        pytest.skip("models/release has no ONNX embedder")
    sdk = tmp_path / "sdk"
    sdk.mkdir()
    for name in SDK_FILES:
        (sdk / name).write_bytes(b"// " + name.encode())
    monkeypatch.setenv("COINVISION_WEBAPP_SDK_DIR", str(sdk))
    app = create_app(data_dir=tmp_path / "data", models_dir=RELEASE)
    client = app.test_client()

    assert client.get("/app").status_code == 301
    page = client.get("/app/")
    assert page.status_code == 200 and b'src="/app/app.js"' in page.data
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp and "unsafe-inline" not in csp and "unsafe-eval'" not in \
        csp.replace("'wasm-unsafe-eval'", "")
    assert "frame-ancestors 'none'" in csp and page.headers["X-Frame-Options"] == "DENY"

    cfg = client.get("/app/config.json").get_json()
    assert cfg["public_key"] == public_key_b64(load_or_create_key(tmp_path / "data" / "signing_key.pem"))
    embedder = next(m for m in cfg["models"] if m["name"] == "embedder.onnx")
    data = (RELEASE / "embedder.onnx").read_bytes()
    assert (embedder["size"], embedder["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert client.get(embedder["url"]).data == data

    sw = client.get("/app/sw.js")
    assert sw.mimetype == "text/javascript" and cfg["build"].encode() in sw.data and b"__BUILD__" not in sw.data
    assert client.get("/app/sdk/ort-wasm-simd-threaded.wasm").mimetype == "application/wasm"
    assert client.get("/app/manifest.webmanifest").mimetype == "application/manifest+json"
    for bad in ("/app/models/release.json", "/app/models/..%2Fexport.json", "/app/sdk/other.js", "/app/x.py"):
        assert client.get(bad).status_code == 404, bad
