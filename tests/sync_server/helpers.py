"""Helpers for sync server tests: a loopback server with token-carrying HTTP calls, sample coins, populate."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
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
