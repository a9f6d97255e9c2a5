"""``/openapi.json`` describes every route with real schemas, the server's real responses match those schemas
(pydantic models with ``extra="forbid"``), and ``/docs`` shows it to people."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import requests
from coinvision.sync_server.schemas import Error, OpDoc

from tests.sync_server.helpers import Server, sample_coins


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {node["$ref"]} if "$ref" in node else set().union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


def test_openapi_describes_every_route_with_schemas(sqlite_server: Server) -> None:
    spec = requests.get(sqlite_server.url + "/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.1")
    schemas = spec["components"]["schemas"]
    ops = {}
    for rule in sqlite_server.local.app.url_map.iter_rules():
        if rule.rule.startswith("/v1/"):
            path = re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule.rule)
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                ops[(path, method.lower())] = spec["paths"][path][method.lower()]
    assert len(ops) >= 21
    for (path, method), op in ops.items():
        ok = [s for s in op["responses"] if s.startswith("2")]
        assert ok, (path, method)
        for status in ok:
            content = op["responses"][status].get("content")
            assert content, (path, method, status)
            schema = next(iter(content.values()))["schema"]
            assert "$ref" in schema or schema.get("format") == "binary", (path, method)
        if method in ("post", "put", "patch") and not path.endswith("/publish"):
            assert op["requestBody"]["required"] and op["requestBody"]["content"], (path, method)
        if path != "/v1/health":
            assert op["security"] == [{"bearer": []}] and "401" in op["responses"], (path, method)
        for param in re.findall(r"{(\w+)}", path):
            assert any(p["name"] == param and p["in"] == "path" for p in op["parameters"]), (path, param)
    # every $ref resolves, and the bodies have real fields
    for ref in _refs(spec):
        assert ref.rsplit("/", 1)[-1] in schemas, ref
    assert set(schemas["Coin"]["required"]) >= {"coin_id", "label", "extra"}
    search = spec["paths"]["/v1/catalogs/{catalog_id}/search"]["post"]
    assert set(search["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert schemas["SearchResult"]["properties"]["unknown"]["type"] == "boolean"
    assert {"429", "413", "415"} <= set(search["responses"])


def _check(server: Server, resp: requests.Response) -> None:
    """Validate a response against the model its route declares (or Error for errors)."""
    path = urlsplit(resp.url).path
    adapter = server.local.app.url_map.bind("localhost")
    endpoint, _ = adapter.match(path, method=resp.request.method)
    op: OpDoc = server.local.app.view_functions[endpoint].__openapi__
    if resp.status_code >= 400:
        Error.model_validate(resp.json(), strict=True)
        return
    if op.alt_response is not None and resp.status_code == op.alt_response[0]:
        op.alt_response[1].model_validate(resp.json(), strict=True)
        return
    assert resp.status_code in (op.status, *op.extra_responses), (path, resp.status_code)
    if op.response is None:
        assert resp.headers["Content-Type"].startswith(op.binary_type)
    else:
        op.response.model_validate(resp.json(), strict=True)


def test_real_responses_match_their_schemas(sqlite_server: Server) -> None:
    s = sqlite_server
    coins = sample_coins("coins211", n_coins=3, per_coin=1)
    photo = coins[0][2][0]
    calls = [
        lambda: s.get("/v1/health"),
        lambda: s.post("/v1/catalogs", json={"id": "c", "name": "C"}),
        lambda: s.patch("/v1/catalogs/c", json={"name": "Coins"}),
        lambda: s.put("/v1/catalogs/c/coins/a", json={"label": "A", "extra": {"coin_group": "g"}}),
        lambda: s.post("/v1/catalogs/c/coins/a/images", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                       data={"country": "x"}),
        lambda: s.post("/v1/catalogs/c/coins/b/images", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                       data={"create": "1"}),
        lambda: s.get("/v1/catalogs"),
        lambda: s.get("/v1/catalogs/c"),
        lambda: s.get("/v1/catalogs/c/coins?q=a&limit=5"),
        lambda: s.get("/v1/catalogs/c/coins/a"),
        lambda: s.post("/v1/catalogs/c/search?overlay=1&thumbnails=1",
                       files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}),
        lambda: s.post("/v1/catalogs/c/search", json={"embedding": [0.1] * 64}),
        lambda: s.get("/v1/catalogs/c/duplicates"),
        lambda: s.get("/v1/catalogs/c/changes"),
        lambda: s.post("/v1/catalogs/c/publish", headers={"Idempotency-Key": "k1"}),
        lambda: s.post("/v1/catalogs/c/publish", headers={"Idempotency-Key": "k1"}),  # replayed (200)
        lambda: s.get("/v1/catalogs/c/changes"),
        lambda: s.get("/v1/catalogs/c/versions"),
        lambda: s.get("/v1/catalogs/c/manifest", who="device"),
        lambda: s.get("/v1/catalogs/c/versions/1/pack", who="device"),
        lambda: s.get("/v1/catalogs/c/versions/1/delta", who="device"),  # 404: v1 has no delta
        lambda: s.get("/v1/catalogs/c/versions/1/pack", who="device", headers={"Range": "bytes=0-9"}),
        lambda: s.get("/v1/images/1/thumbnail"),
        lambda: s.get("/v1/catalogs/nope"),
        lambda: s.post("/v1/catalogs/c/publish", who="device"),
        lambda: s.delete("/v1/images/1"),
        lambda: s.delete("/v1/catalogs/c/coins/b"),
        lambda: s.delete("/v1/catalogs/c?confirm=c"),
    ]
    statuses = []
    for call in calls:
        resp = call()
        _check(s, resp)
        statuses.append(resp.status_code)
    assert statuses.count(200) + statuses.count(201) + statuses.count(206) >= 24, statuses
    assert {401, 403, 404} & set(statuses)


def test_docs_page_lists_every_route_and_body(sqlite_server: Server) -> None:
    s = sqlite_server
    spec = requests.get(s.url + "/openapi.json", timeout=10).json()
    page = requests.get(s.url + "/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.text
    for path, methods in spec["paths"].items():
        assert f"<code>{path}</code>" in html, path
        for op in methods.values():
            assert op["summary"].replace("'", "&#39;") in html, op["summary"]
    for name in spec["components"]["schemas"]:
        assert f'id="model-{name}"' in html, name
    assert json.dumps(spec)  # the document is plain JSON
