"""Helpers for sync server tests: a loopback server with token-carrying HTTP calls, sample coins, populate."""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from coinvision.sync_server.live import LocalServer
from coinvision.sync_server.state import ServerState

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample_coins"


@dataclass
class Server:
    """A loopback server plus small HTTP helpers that send the right token."""

    local: LocalServer

    @property
    def url(self) -> str:
        return self.local.url

    @property
    def state(self) -> ServerState:
        return self.local.state

    @property
    def public_key(self) -> str:
        return self.local.public_key

    def headers(self, who: str = "maintainer") -> dict[str, str]:
        token = self.local.maintainer_token if who == "maintainer" else self.local.device_token
        return {"Authorization": f"Bearer {token}"}

    def get(self, path: str, who: str = "maintainer", **kw: Any) -> requests.Response:
        return requests.get(self.url + path, headers={**self.headers(who), **kw.pop("headers", {})}, timeout=30, **kw)

    def post(self, path: str, who: str = "maintainer", **kw: Any) -> requests.Response:
        return requests.post(self.url + path, headers={**self.headers(who), **kw.pop("headers", {})}, timeout=60, **kw)

    def put(self, path: str, who: str = "maintainer", **kw: Any) -> requests.Response:
        return requests.put(self.url + path, headers=self.headers(who), timeout=30, **kw)

    def patch(self, path: str, who: str = "maintainer", **kw: Any) -> requests.Response:
        return requests.patch(self.url + path, headers={**self.headers(who), **kw.pop("headers", {})}, timeout=30,
                              **kw)

    def delete(self, path: str, who: str = "maintainer") -> requests.Response:
        return requests.delete(self.url + path, headers=self.headers(who), timeout=30)


def sample_coins(dataset: str = "coins211", n_coins: int = 4, per_coin: int = 2) -> list[tuple[str, str, list[Path]]]:
    """(coin_id, label, image paths) for the first ``n_coins`` classes of a bundled sample dataset."""
    root = SAMPLE / dataset
    with open(root / "classes.csv", newline="") as f:
        classes = list(csv.DictReader(f))
    out = []
    for row in classes[:n_coins]:
        images = sorted((root / "images" / row["class_id"]).iterdir())[:per_coin]
        out.append((f"{dataset}-{row['class_id']}", row["name"], images))
    return out


def populate(server: Server, catalog_id: str, coins: list[tuple[str, str, list[Path]]]) -> None:
    """The maintainer flow: create the catalog, the coins, upload their reference photos."""
    r = server.post("/v1/catalogs", json={"id": catalog_id, "name": catalog_id})
    assert r.status_code in (201, 409), r.text
    for coin_id, label, images in coins:
        r = server.put(f"/v1/catalogs/{catalog_id}/coins/{coin_id}", json={"label": label, "country": "x"})
        assert r.status_code in (200, 201), r.text
        files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in images]
        r = server.post(f"/v1/catalogs/{catalog_id}/coins/{coin_id}/images", files=files)
        assert r.status_code == 201, r.text


ServerFactory = Callable[..., Server]


# (path, upstream body) -> body to send, or None to pass it through unchanged.
Rewrite = Callable[[str, bytes], bytes | None]


@dataclass
class TamperingProxy:
    """A man in the middle on loopback between a device and the real server: forwards GETs, and can rewrite
    a response body (``rewrite``) or cut the body of paths ending in ``cut_suffix`` short after ``cut_after``
    bytes (a dropped connection).

    ``requests`` records (path, Range header) of every request the device made.
    """

    upstream: str
    rewrite: Rewrite | None = None
    cut_after: int | None = None
    cut_suffix: str = "/pack"
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # http.server dispatches on this name
                proxy.requests.append((self.path, self.headers.get("Range")))
                forward = {k: v for k, v in self.headers.items() if k.lower() in
                           ("authorization", "range", "if-range", "if-none-match")}
                up = requests.get(proxy.upstream + self.path, headers=forward, timeout=30)
                body = up.content
                changed = proxy.rewrite(self.path, body) if proxy.rewrite else None
                if changed is not None:
                    body = changed
                self.send_response(up.status_code)
                for k, v in up.headers.items():
                    if k.lower() in ("content-type", "etag", "content-range", "accept-ranges"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = proxy.cut_after if self.path.endswith(proxy.cut_suffix) else None
                if cut is not None and len(body) > cut:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="tampering-proxy", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
