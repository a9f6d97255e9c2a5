"""The offline phone web app (``/app/``): a PWA that downloads the models and a signed catalog pack once and then
recognizes coins with no network, in the browser, through the TypeScript SDK's browser bundle.

What is served from where:

- ``/app/`` and its shell (HTML, script, style, web manifest, icons, service worker): ``sync_server/webapp/``,
  package data (they install with the server).
- ``/app/sdk/…``: the SDK's browser build ``coinvision.js`` (one ES module, onnxruntime-web left out of it) and
  onnxruntime-web's CPU build ``ort.wasm.bundle.min.mjs`` + ``ort-wasm-simd-threaded.wasm``, which the app hands
  to the SDK. They are build outputs, not source: ``cd sdk_js && npm ci && npm run build`` writes the first to
  ``sdk_js/dist/browser`` and installs the others in ``sdk_js/node_modules/onnxruntime-web/dist`` (both found
  there in a checkout). An installed server is pointed at one folder holding all three with
  ``COINVISION_WEBAPP_SDK_DIR``. Without them ``/app/`` answers 503 with a page naming the build command (never
  a blank page).
- ``/app/models/{segmenter,embedder}.onnx[.meta.json]``: the server's ONNX models (``--models``), the same files
  the server embeds with, so the phone's vectors match the pack's.
- ``/app/config.json``: the server's public key (the phone pins it at the first download and verifies every
  manifest with it), the model files with their sizes and sha256, and the SDK build's id.
- The manifest, the pack and the reference thumbnails come from the device-sync API (``/v1``, device token).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from coinvision.sync_server.signing import public_key_b64
from coinvision.sync_server.state import ServerState
from flask import Blueprint, Response, current_app, redirect, render_template_string, send_file
from werkzeug.exceptions import NotFound
from werkzeug.utils import safe_join

__all__ = ["APP_CSP", "BUILD_COMMAND", "bp", "sdk_dirs", "sdk_path"]

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "webapp"
# A checkout (editable install): the SDK's build output and its onnxruntime-web beside the server's source folder.
CHECKOUT_SDK_DIRS = (HERE.parent / "sdk_js" / "dist" / "browser",
                     HERE.parent / "sdk_js" / "node_modules" / "onnxruntime-web" / "dist")
SDK_ENV = "COINVISION_WEBAPP_SDK_DIR"
BUILD_COMMAND = "cd sdk_js && npm ci && npm run build"
# The wasm-only onnxruntime-web build (CPU, single thread here: no cross-origin isolation) is 14 MB; the default
# one carries WebGPU as well (28 MB) and phones would download it for nothing.
SDK_FILES = ("coinvision.js", "ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
MODEL_FILES = ("segmenter.onnx", "segmenter.onnx.meta.json", "embedder.onnx", "embedder.onnx.meta.json")
SHELL_FILES = ("app.js", "app.css", "sw.js", "manifest.webmanifest", "icon.svg", "icon-192.png", "icon-512.png")

# The server's CSP plus what the app needs: WebAssembly compilation for onnxruntime-web ('wasm-unsafe-eval' allows
# compiling wasm, not evaluating strings), the web manifest and the service worker, all from this origin only.
APP_CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self'; manifest-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

bp = Blueprint("webapp", __name__, url_prefix="/app")


def sdk_dirs() -> tuple[Path, ...]:
    """Where the SDK's browser build is read from: ``$COINVISION_WEBAPP_SDK_DIR``, else the checkout's build."""
    env = os.environ.get(SDK_ENV)
    return (Path(env).resolve(),) if env else CHECKOUT_SDK_DIRS


def sdk_path(name: str) -> Path | None:
    """The first of :func:`sdk_dirs` that holds ``name``."""
    return next((d / name for d in sdk_dirs() if (d / name).is_file()), None)


def _missing_sdk_files() -> list[str]:
    return [name for name in SDK_FILES if sdk_path(name) is None]


@dataclass(frozen=True)
class _FileInfo:
    size: int
    sha256: str
    mtime_ns: int


_hash_lock = threading.Lock()
_hashes: dict[Path, _FileInfo] = {}


def _info(path: Path) -> _FileInfo:
    """Size and sha256 of a served file, hashed once per (file, mtime, size) per process (models are ~10 MB)."""
    st = path.stat()
    with _hash_lock:
        known = _hashes.get(path)
        if known and known.mtime_ns == st.st_mtime_ns and known.size == st.st_size:
            return known
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    info = _FileInfo(st.st_size, digest.hexdigest(), st.st_mtime_ns)
    with _hash_lock:
        _hashes[path] = info
    return info


def _state() -> ServerState:
    return current_app.extensions["coinvision"]


def _models_dir() -> Path | None:
    return _state().config.models_dir


def _build_id() -> str:
    """Changes whenever a shell file, the SDK build or the models change: the service worker's cache name, so a
    new server release replaces what phones cached (and an unchanged one never makes them download again)."""
    digest = hashlib.sha256()
    files = [APP_DIR / n for n in (*SHELL_FILES, "index.html")]
    files += [p for p in map(sdk_path, SDK_FILES) if p is not None]
    models = _models_dir()
    if models is not None:
        files += [models / n for n in MODEL_FILES]
    for path in files:
        if path.is_file():
            digest.update(f"{path.name}:{_info(path).sha256}\n".encode())
    return digest.hexdigest()[:16]


@bp.after_request
def _app_headers(resp: Response) -> Response:
    # Set before the app-wide SECURITY_HEADERS (which only fill in what is missing).
    resp.headers["Content-Security-Policy"] = APP_CSP
    resp.headers.setdefault("Cache-Control", "no-cache")  # revalidate: the service worker does the offline caching
    return resp


_MISSING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>coinvision app: not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem">
<h1>The phone app is not built on this server</h1>
<p>{{ problem }}</p>
<p>Build it in the repository checkout with <code>{{ command }}</code> and reload this page, or point
<code>{{ env }}</code> at a folder holding {{ files }}.</p>
</body></html>
"""


def _unavailable(problem: str) -> Response:
    html = render_template_string(_MISSING_PAGE, problem=problem, command=BUILD_COMMAND, env=SDK_ENV,
                                  files=", ".join(SDK_FILES))
    return Response(html, status=503, mimetype="text/html")


@bp.get("")
def app_root() -> Response:
    return redirect("/app/", code=301)  # type: ignore[return-value]  # werkzeug's Response is Flask's base


@bp.get("/")
def app_index() -> Response:
    missing = _missing_sdk_files()
    if missing:
        where = " or ".join(str(d) for d in sdk_dirs())
        return _unavailable(f"The TypeScript SDK's browser build is missing: no {', '.join(missing)} in {where}.")
    if _models_dir() is None:
        return _unavailable("The server was started without models (--models / COINVISION_MODELS_DIR), so there "
                            "is nothing for the phone to download; restart it with the release models.")
    return send_file(APP_DIR / "index.html", mimetype="text/html", max_age=0)


@bp.get("/config.json")
def app_config() -> Response:
    models = _models_dir()
    files = []
    if models is not None:
        for name in MODEL_FILES:
            path = models / name
            if path.is_file():
                info = _info(path)
                files.append({"name": name, "url": f"/app/models/{name}", "size": info.size, "sha256": info.sha256})
    body = {"public_key": public_key_b64(_state().signing_key), "models": files, "build": _build_id()}
    return Response(json.dumps(body), mimetype="application/json")


@bp.get("/sw.js")
def service_worker() -> Response:
    # The build id names the caches: a changed file makes a new worker that caches afresh and drops the old ones.
    text = (APP_DIR / "sw.js").read_text(encoding="utf-8").replace("__BUILD__", _build_id())
    return Response(text, mimetype="text/javascript")


@bp.get("/models/<name>")
def model_file(name: str) -> Response:
    models = _models_dir()
    if models is None or name not in MODEL_FILES or not (models / name).is_file():
        raise NotFound(f"no model file {name!r} on this server; it serves {', '.join(MODEL_FILES)} from --models")
    mimetype = "application/json" if name.endswith(".json") else "application/octet-stream"
    return send_file(models / name, mimetype=mimetype, max_age=0, etag=_info(models / name).sha256)


@bp.get("/sdk/<name>")
def sdk_file(name: str) -> Response:
    if name not in SDK_FILES:
        raise NotFound(f"no SDK file {name!r}; the app's SDK files are {', '.join(SDK_FILES)}")
    path = sdk_path(name)
    if path is None:
        raise NotFound(f"{name} is missing from {' and '.join(map(str, sdk_dirs()))}: build the SDK with "
                       f"`{BUILD_COMMAND}`")
    mimetype = {"js": "text/javascript", "mjs": "text/javascript", "wasm": "application/wasm"}[name.rsplit(".", 1)[1]]
    return send_file(path, mimetype=mimetype, max_age=0)


@bp.get("/<name>")
def shell_file(name: str) -> Response:
    if name not in SHELL_FILES:
        raise NotFound(f"no app file {name!r}")
    path = safe_join(str(APP_DIR), name)
    assert path is not None  # name is one of SHELL_FILES
    mimetype = {"js": "text/javascript", "css": "text/css", "webmanifest": "application/manifest+json",
                "svg": "image/svg+xml", "png": "image/png"}[name.rsplit(".", 1)[1]]
    return send_file(path, mimetype=mimetype, max_age=0)
