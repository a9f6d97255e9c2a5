"""The API routes behind the maintainer web app: uploads that create coins atomically and never blank a field,
coin search and pages, rename, change summary before publishing, search verdicts, readable error pages."""

from __future__ import annotations

import requests

from tests.sync_server.helpers import Server, populate, sample_coins


def _files(paths: list, ctype: str = "image/jpeg") -> list:
    return [("image", (p.name, p.read_bytes(), ctype)) for p in paths]


def test_upload_with_empty_fields_never_overwrites_the_coin(server: Server) -> None:
    s = server
    (coin_id, label, photos), = sample_coins("coins211", n_coins=1, per_coin=2)
    populate(s, "c", [(coin_id, label, photos[:1])])
    assert s.put(f"/v1/catalogs/c/coins/{coin_id}", json={"label": "10 Sen", "side": "obverse"}).status_code == 200
    # the web page's old bug: Label box left empty -> label replaced by the coin id ("107"); here it is ignored
    r = s.post(f"/v1/catalogs/c/coins/{coin_id}/images", files=_files(photos[1:]),
               data={"label": "", "country": "  ", "denomination": "10"})
    assert r.status_code == 201, r.text
    coin = s.get(f"/v1/catalogs/c/coins/{coin_id}").json()
    assert (coin["label"], coin["side"], coin["denomination"], coin["image_count"]) == ("10 Sen", "obverse", "10", 2)
    assert r.json()["coin_created"] is False
    r = s.post(f"/v1/catalogs/c/coins/{coin_id}/images", files=_files(photos[1:]), data={"labell": "typo"})
    assert r.status_code == 400 and r.json()["code"] == "unknown_field"


def test_upload_creates_a_coin_only_together_with_its_photos(server: Server) -> None:
    s = server
    assert s.post("/v1/catalogs", json={"id": "c"}).status_code == 201
    photo = sample_coins("coins211", n_coins=1, per_coin=1)[0][2][0]
    url = "/v1/catalogs/c/coins/new-coin/images"
    r = s.post(url, files=_files([photo]))
    assert r.status_code == 404 and "create=1" in r.json()["message"]
    # a refused file: nothing is created, not even the coin
    r = s.post(url, files=[("image", ("x.jpg", b"not a photo", "image/jpeg"))], data={"create": "1", "label": "New"})
    assert r.status_code == 415
    assert s.get("/v1/catalogs/c/coins/new-coin").status_code == 404
    r = s.post(url, files=_files([photo]), data={"create": "1", "label": "New", "country": ""})
    assert r.status_code == 201 and r.json()["coin_created"] is True
    coin = s.get("/v1/catalogs/c/coins/new-coin").json()
    assert (coin["label"], coin["country"], coin["image_count"]) == ("New", "", 1)
    assert coin["images"][0]["filename"] == photo.name
    r = s.post("/v1/catalogs/c/coins/bad..id%20x/images", files=_files([photo]), data={"create": "1"})
    assert r.status_code == 400


def test_coins_search_and_pages(sqlite_server: Server) -> None:
    s = sqlite_server
    assert s.post("/v1/catalogs", json={"id": "c"}).status_code == 201
    for i in range(7):
        body = {"label": f"{i} Euro" if i % 2 else f"{i} Cent", "country": "100%_real"}
        assert s.put(f"/v1/catalogs/c/coins/coin-{i}", json=body).status_code == 201
    page = s.get("/v1/catalogs/c/coins?offset=2&limit=3").json()
    assert page["total"] == 7 and [c["coin_id"] for c in page["coins"]] == ["coin-2", "coin-3", "coin-4"]
    assert page["coins"][0]["thumbnail_image_id"] is None and page["coins"][0]["image_count"] == 0
    euro = s.get("/v1/catalogs/c/coins?q=EURO").json()
    assert euro["total"] == 3 and all("Euro" in c["label"] for c in euro["coins"])
    assert s.get("/v1/catalogs/c/coins?q=%25_").json()["total"] == 7  # LIKE wildcards are matched literally
    assert s.get("/v1/catalogs/c/coins?q=x%25y").json()["total"] == 0
    assert s.get("/v1/catalogs/c/coins?limit=0").json()["code"] == "bad_limit"
    assert s.get("/v1/catalogs/c/coins?offset=-1").json()["code"] == "bad_offset"


def test_rename_catalog(sqlite_server: Server) -> None:
    s = sqlite_server
    assert s.post("/v1/catalogs", json={"id": "c", "name": "Old"}).status_code == 201
    assert s.patch("/v1/catalogs/c", json={"name": "New name"}).json() == {"id": "c", "name": "New name"}
    assert s.patch("/v1/catalogs/c", json={"id": "d"}).json()["code"] == "unknown_field"
    assert s.patch("/v1/catalogs/c", json={"name": " "}).json()["code"] == "bad_name"
    assert s.patch("/v1/catalogs/c", who="device", json={"name": "x"}).status_code == 403
    assert s.get("/v1/catalogs/c").json()["name"] == "New name"


def test_changes_summarise_what_publishing_would_change(server: Server) -> None:
    s = server
    coins = sample_coins("coins211", n_coins=4, per_coin=2)
    first = [(c, lbl, p[:1]) for c, lbl, p in coins[:3]]
    populate(s, "c", first)
    before = s.get("/v1/catalogs/c/changes").json()
    assert before["since_version"] is None and before["added"] == sorted(c[0] for c in first)
    assert s.post("/v1/catalogs/c/publish").status_code == 201
    assert s.get("/v1/catalogs/c/changes").json()["unchanged"] is True

    a, b, c = (x[0] for x in first)
    edit = {"label": "renamed", "extra": {"coin_group": "g1"}}
    assert s.put(f"/v1/catalogs/c/coins/{a}", json=edit).status_code == 200
    assert s.delete(f"/v1/catalogs/c/coins/{b}").status_code == 200
    assert s.post(f"/v1/catalogs/c/coins/{c}/images", files=_files(coins[2][2][1:])).status_code == 201
    populate(s, "c", [(coins[3][0], coins[3][1], coins[3][2][:1])])
    assert s.put("/v1/catalogs/c/coins/empty", json={"label": "no photo yet"}).status_code == 201
    ch = s.get("/v1/catalogs/c/changes").json()
    assert ch["since_version"] == 1 and ch["unchanged"] is False
    assert ch["added"] == [coins[3][0]] and ch["removed"] == [b]
    assert ch["edited"] == [{"coin_id": a, "fields": ["label", "extra"]}]
    assert ch["photos_changed"] == [{"coin_id": c, "before": 1, "now": 2}]
    assert ch["without_photos"] == ["empty"]
    assert s.get("/v1/catalogs/c/changes", who="device").status_code == 403


def test_search_answers_unknown_with_the_threshold(sqlite_server: Server) -> None:
    s = sqlite_server
    assert s.post("/v1/catalogs", json={"id": "c"}).status_code == 201
    photo = sample_coins("coins211", n_coins=1, per_coin=1)[0][2][0]
    empty = s.post("/v1/catalogs/c/search", files=_files([photo])).json()
    threshold = s.state.embedder().unknown_threshold
    assert empty["matches"] == [] and empty["unknown"] is True and empty["threshold"] == threshold
    populate(s, "c", [("a", "A", [photo])])
    hit = s.post("/v1/catalogs/c/search", files=_files([photo])).json()
    assert hit["matches"][0]["score"] > 0.999 and hit["unknown"] is (hit["matches"][0]["score"] < threshold)
    assert hit["unknown"] is False


def test_browsers_get_readable_error_pages_and_the_api_stays_json(sqlite_server: Server) -> None:
    s = sqlite_server
    html = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    r = requests.get(s.url + "/no/such/page", headers=html, timeout=10)
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("text/html")
    assert "There is no page at this address" in r.text and "<h2>404" in r.text
    r = requests.post(s.url + "/", headers=html, timeout=10)
    assert r.status_code == 405 and r.headers["Content-Type"].startswith("text/html")
    for headers in (html, {}):
        r = requests.get(s.url + "/v1/no/such/route", headers=headers, timeout=10)
        assert r.status_code == 404 and r.json()["code"] == "not_found"
