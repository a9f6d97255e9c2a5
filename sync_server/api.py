"""The JSON API (blueprint ``/v1``): catalogs, coins, reference images, search, publish, manifest, packs."""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from coinvision.sdk.errors import CoinVisionError
from coinvision.sync_server.api_errors import ApiError
from coinvision.sync_server.auth import require_scope
from coinvision.sync_server.models import Catalog, CatalogVersion, Coin, ReferenceImage
from coinvision.sync_server.publish import latest_version, publish_catalog
from coinvision.sync_server.signing import sign_payload
from coinvision.sync_server.state import state
from coinvision.sync_server.storage import write_atomic
from coinvision.sync_server.uploads import decode_upload, overlay_png, thumbnail_jpeg
from flask import Blueprint, Response, g, jsonify, request, send_file
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

__all__ = ["bp"]

bp = Blueprint("api", __name__, url_prefix="/v1")

CATALOG_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
COIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Field -> longest value the column holds (PostgreSQL refuses longer ones; SQLite would silently keep them).
COIN_FIELDS = {"label": 200, "country": 100, "currency": 100, "denomination": 100, "side": 32, "years": 100}
MAX_EXTRA_ITEMS = 32
MAX_EXTRA_CHARS = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
BOTH = ("maintainer", "device")
# Route ids above the columns' range (BIGINT image ids, INTEGER versions) do not match: 404, not a DB error.


# ---------------------------------------------------------------- helpers
def _json_body() -> dict[str, Any]:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send a JSON body with 'Content-Type: application/json'")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # absurdly deep nesting; json raises this instead of a ValueError
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "the body is not a JSON object")
    return body


def _text(value: object, name: str, max_chars: int) -> str:
    """A metadata string: bounded, no control characters (PostgreSQL cannot even store NUL)."""
    if not isinstance(value, str) or len(value) > max_chars or _CONTROL.search(value):
        raise ApiError(400, "bad_field", f"{name} must be a string of at most {max_chars} characters, "
                       "without control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escaped in the JSON ("\ud800")
        raise ApiError(400, "bad_field", f"{name} is not valid Unicode text") from exc
    return value


def _extra(value: object) -> dict[str, str]:
    """``extra`` becomes the pack record's string map: flat, string to string, bounded."""
    if not isinstance(value, dict) or len(value) > MAX_EXTRA_ITEMS:
        raise ApiError(400, "bad_field", f"extra must be a JSON object of at most {MAX_EXTRA_ITEMS} entries")
    for k, v in value.items():
        if not k:
            raise ApiError(400, "bad_field", "extra keys must not be empty")
        _text(k, "an extra key", 64)
        _text(v, f"extra[{k!r}]", MAX_EXTRA_CHARS)
    return dict(value)


def _catalog(catalog_id: str) -> Catalog:
    cat = g.db.get(Catalog, catalog_id)
    if cat is None:
        raise ApiError(404, "catalog_not_found", f"no catalog {catalog_id!r}; list them with GET /v1/catalogs")
    return cat


def _coin(catalog_id: str, coin_id: str) -> Coin:
    coin = g.db.scalar(select(Coin).where(Coin.catalog_id == catalog_id, Coin.coin_id == coin_id))
    if coin is None:
        raise ApiError(404, "coin_not_found", f"no coin {coin_id!r} in catalog {catalog_id!r}")
    return coin


def _iso(dt: datetime) -> str:
    if dt.tzinfo is None:  # SQLite hands back naive datetimes; they were stored as UTC
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _coin_json(coin: Coin, image_count: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"coin_id": coin.coin_id, **{f: getattr(coin, f) for f in COIN_FIELDS}, "extra": coin.extra}
    if image_count is not None:
        d["image_count"] = image_count
    return d


def _version_json(v: CatalogVersion) -> dict[str, Any]:
    base = f"/v1/catalogs/{v.catalog_id}/versions/{v.version}"
    return {
        "version": v.version, "created_at": _iso(v.created_at), "model_fingerprint": v.model_fingerprint,
        "coin_count": v.coin_count, "vector_count": v.vector_count, "quant": v.quant,
        "pack": {"url": f"{base}/pack", "size": v.pack_size, "sha256": v.pack_sha256},
        "delta": None if v.delta_file is None else {
            "from_version": v.delta_from, "url": f"{base}/delta", "size": v.delta_size, "sha256": v.delta_sha256,
        },
    }


def _bump_generation(cat: Catalog) -> tuple[int, int]:
    """Atomically increment the catalog's generation (row-locked, so concurrent writers never share a value)."""
    new = g.db.execute(
        update(Catalog).where(Catalog.id == cat.id).values(generation=Catalog.generation + 1)
        .returning(Catalog.generation)
    ).scalar_one()
    return new - 1, new


# ---------------------------------------------------------------- catalogs
@bp.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/catalogs")
@require_scope(*BOTH)
def list_catalogs() -> Response:
    cats = g.db.scalars(select(Catalog).order_by(Catalog.id)).all()
    counts = dict(g.db.execute(select(Coin.catalog_id, func.count()).group_by(Coin.catalog_id)).all())
    out = []
    for c in cats:
        latest = latest_version(g.db, c.id)
        out.append({"id": c.id, "name": c.name, "coin_count": counts.get(c.id, 0),
                    "latest_version": latest.version if latest else None})
    return jsonify({"catalogs": out})


@bp.post("/catalogs")
@require_scope("maintainer")
def create_catalog() -> tuple[Response, int]:
    body = _json_body()
    cid = body.get("id")
    if not isinstance(cid, str) or not CATALOG_ID.match(cid):
        raise ApiError(400, "bad_catalog_id", "id must be 1-64 chars of a-z, 0-9, '-', '_' (starting alphanumeric)")
    name = body.get("name", cid)
    if not isinstance(name, str) or len(name) > 200 or _CONTROL.search(name):
        raise ApiError(400, "bad_name", "name must be a string of at most 200 characters, without control characters")
    if g.db.get(Catalog, cid) is not None:
        raise ApiError(409, "catalog_exists", f"catalog {cid!r} already exists")
    g.db.add(Catalog(id=cid, name=name))
    try:
        g.db.commit()
    except IntegrityError as exc:
        raise ApiError(409, "catalog_exists", f"catalog {cid!r} already exists") from exc
    return jsonify({"id": cid, "name": name}), 201


@bp.get("/catalogs/<catalog_id>")
@require_scope(*BOTH)
def get_catalog(catalog_id: str) -> Response:
    cat = _catalog(catalog_id)
    rows = g.db.execute(
        select(Coin, func.count(ReferenceImage.id))
        .outerjoin(ReferenceImage, ReferenceImage.coin_pk == Coin.id)
        .where(Coin.catalog_id == catalog_id).group_by(Coin.id).order_by(Coin.coin_id)
    ).all()
    return jsonify({
        "id": cat.id, "name": cat.name, "created_at": _iso(cat.created_at),
        "coins": [_coin_json(c, n) for c, n in rows],
        "versions": [_version_json(v) for v in cat.versions],
    })


@bp.get("/catalogs/<catalog_id>/versions")
@require_scope(*BOTH)
def list_versions(catalog_id: str) -> Response:
    cat = _catalog(catalog_id)
    return jsonify({"versions": [_version_json(v) for v in cat.versions]})


# ---------------------------------------------------------------- coins and images
@bp.put("/catalogs/<catalog_id>/coins/<coin_id>")
@require_scope("maintainer")
def put_coin(catalog_id: str, coin_id: str) -> tuple[Response, int]:
    _catalog(catalog_id)
    if not COIN_ID.match(coin_id):
        raise ApiError(400, "bad_coin_id", "coin id must be 1-128 chars of letters, digits, '.', '-', '_'")
    body = _json_body()
    unknown = sorted(set(body) - set(COIN_FIELDS) - {"extra"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s) {', '.join(unknown)}; allowed: "
                       f"{', '.join([*COIN_FIELDS, 'extra'])}")
    fields = {f: _text(body[f], f, n) for f, n in COIN_FIELDS.items() if f in body}
    extra = _extra(body["extra"]) if "extra" in body else None
    coin = g.db.scalar(select(Coin).where(Coin.catalog_id == catalog_id, Coin.coin_id == coin_id))
    created = coin is None
    if coin is None:
        coin = Coin(catalog_id=catalog_id, coin_id=coin_id, extra={})
        g.db.add(coin)
    for f, value in fields.items():
        setattr(coin, f, value)
    if extra is not None:
        coin.extra = extra
    try:
        g.db.commit()
    except IntegrityError as exc:
        raise ApiError(409, "coin_conflict", f"coin {coin_id!r} was created concurrently; retry") from exc
    return jsonify(_coin_json(coin)), 201 if created else 200


@bp.delete("/catalogs/<catalog_id>/coins/<coin_id>")
@require_scope("maintainer")
def delete_coin(catalog_id: str, coin_id: str) -> Response:
    cat = _catalog(catalog_id)
    coin = _coin(catalog_id, coin_id)
    ref_ids = [i.id for i in coin.images]
    old_gen, new_gen = _bump_generation(cat)
    g.db.delete(coin)
    g.db.commit()
    _apply_removed(catalog_id, ref_ids, old_gen, new_gen)
    return jsonify({"deleted": coin_id, "images_removed": len(ref_ids)})


@bp.get("/catalogs/<catalog_id>/coins")
@require_scope(*BOTH)
def list_coins(catalog_id: str) -> Response:
    _catalog(catalog_id)
    coins = g.db.scalars(select(Coin).where(Coin.catalog_id == catalog_id).order_by(Coin.coin_id)).all()
    return jsonify({"coins": [_coin_json(c) for c in coins]})


def _apply_added(catalog_id: str, rows: list[ReferenceImage], vectors: np.ndarray, coin_id: str,
                 old_gen: int, new_gen: int) -> None:
    st = state()
    current = st.registry.peek(catalog_id)
    if current is not None and current.generation == old_gen and (not len(current) or current.dim == vectors.shape[1]):
        st.registry.swap(
            catalog_id, current.with_added(np.array([r.id for r in rows]), vectors, [coin_id] * len(rows), new_gen)
        )
    # Otherwise the next reader sees the generation mismatch and rebuilds from the database.


def _apply_removed(catalog_id: str, ref_ids: list[int], old_gen: int, new_gen: int) -> None:
    st = state()
    current = st.registry.peek(catalog_id)
    if current is not None and current.generation == old_gen:
        st.registry.swap(catalog_id, current.without(ref_ids, new_gen))


@bp.post("/catalogs/<catalog_id>/coins/<coin_id>/images")
@require_scope("maintainer")
def upload_images(catalog_id: str, coin_id: str) -> tuple[Response, int]:
    st = state()
    cfg = st.config
    cat = _catalog(catalog_id)
    coin = _coin(catalog_id, coin_id)
    if not (request.mimetype or "").startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "upload images as multipart/form-data, field 'image'")
    files = request.files.getlist("image")
    if not files:
        raise ApiError(400, "no_image", "no file in form field 'image'")
    if len(files) > cfg.max_images_per_request:
        raise ApiError(413, "too_many_images", f"at most {cfg.max_images_per_request} images per request")
    # Decode and embed everything before writing anything: one bad file rejects the whole request.
    decoded = [decode_upload(f, max_bytes=cfg.max_image_bytes, max_pixels=cfg.max_image_pixels) for f in files]
    embedder = st.embedder()
    embedded = []
    for up in decoded:
        try:
            embedded.append(embedder.embed(up.image))
        except CoinVisionError as exc:
            raise ApiError(422, "embedding_failed", f"{up.filename}: {exc}") from exc
    vectors = np.stack([e.vector for e in embedded]).astype("<f4")
    rows = []
    for up, emb, vec in zip(decoded, embedded, vectors, strict=True):
        write_atomic(cfg.images_dir / up.sha256[:2] / f"{up.sha256}.img", up.data)
        rows.append(ReferenceImage(
            coin_pk=coin.id, catalog_id=catalog_id, sha256=up.sha256, filename=up.filename,
            width_px=int(up.image.shape[1]), height_px=int(up.image.shape[0]),
            embedding=vec.tobytes(), embedding_dim=int(vec.shape[0]), model_fingerprint=embedder.fingerprint,
            thumbnail_jpeg=thumbnail_jpeg(up.image),
        ))
        del emb
    g.db.add_all(rows)
    old_gen, new_gen = _bump_generation(cat)
    g.db.commit()
    _apply_added(catalog_id, rows, vectors, coin.coin_id, old_gen, new_gen)
    return jsonify({
        "coin_id": coin_id,
        "images": [
            {"id": r.id, "filename": r.filename, "sha256": r.sha256, "coin_found": e.mask is not None,
             "model_fingerprint": r.model_fingerprint}
            for r, e in zip(rows, embedded, strict=True)
        ],
    }), 201


@bp.delete("/images/<int(max=9223372036854775807):image_id>")
@require_scope("maintainer")
def delete_image(image_id: int) -> Response:
    ref = g.db.get(ReferenceImage, image_id)
    if ref is None:
        raise ApiError(404, "image_not_found", f"no reference image {image_id}")
    cat = _catalog(ref.catalog_id)
    old_gen, new_gen = _bump_generation(cat)
    g.db.delete(ref)
    g.db.commit()
    _apply_removed(cat.id, [image_id], old_gen, new_gen)
    return jsonify({"deleted": image_id})


@bp.get("/images/<int(max=9223372036854775807):image_id>/thumbnail")
@require_scope(*BOTH)
def image_thumbnail(image_id: int) -> Response:
    ref = g.db.get(ReferenceImage, image_id)
    if ref is None:
        raise ApiError(404, "image_not_found", f"no reference image {image_id}")
    return Response(ref.thumbnail_jpeg, mimetype="image/jpeg")


# ---------------------------------------------------------------- search and duplicates
def _query_vectors() -> tuple[np.ndarray, dict[str, Any]]:
    """The query embedding from an uploaded photo (multipart 'image') or a JSON 'embedding'."""
    st = state()
    extra: dict[str, Any] = {}
    if (request.mimetype or "").startswith("multipart/form-data"):
        files = request.files.getlist("image")
        if len(files) != 1:
            raise ApiError(400, "no_image", "send exactly one query photo in form field 'image'")
        up = decode_upload(files[0], max_bytes=st.config.max_image_bytes, max_pixels=st.config.max_image_pixels)
        started = time.perf_counter()
        try:
            emb = st.embedder().embed(up.image)
        except CoinVisionError as exc:
            raise ApiError(422, "embedding_failed", str(exc)) from exc
        extra["embed_ms"] = round((time.perf_counter() - started) * 1e3, 2)
        extra["segmentation"] = {"found": emb.mask is not None, "bbox": list(emb.bbox) if emb.bbox else None}
        if request.args.get("overlay") in ("1", "true"):
            png = overlay_png(up.image, emb.mask)
            extra["segmentation"]["overlay"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return emb.vector[None], extra
    body = _json_body()
    vec = body.get("embedding")
    try:
        q = np.asarray(vec, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "bad_embedding", "embedding must be a list of numbers") from exc
    if q.ndim != 1 or q.size == 0 or not np.all(np.isfinite(q)):
        raise ApiError(400, "bad_embedding", "embedding must be a non-empty flat list of finite numbers")
    norm = float(np.linalg.norm(q))
    if norm == 0.0:
        raise ApiError(400, "bad_embedding", "embedding is all zeros")
    return (q / norm)[None], extra


@bp.post("/catalogs/<catalog_id>/search")
@require_scope(*BOTH)
def search(catalog_id: str) -> Response:
    st = state()
    cat = _catalog(catalog_id)
    try:
        top_k = int(request.args.get("top_k", 5))
    except ValueError as exc:
        raise ApiError(400, "bad_top_k", "top_k must be an integer") from exc
    if not 1 <= top_k <= st.config.search_top_k_max:
        raise ApiError(400, "bad_top_k", f"top_k must be in 1..{st.config.search_top_k_max}")
    query, extra = _query_vectors()
    index = st.index_for(g.db, cat)
    if len(index) and query.shape[1] != index.dim:
        raise ApiError(
            400, "bad_embedding", f"embedding has {query.shape[1]} dimensions; the catalog's have {index.dim}"
        )
    started = time.perf_counter()
    hits = index.search(query, top_k)[0]
    search_ms = round((time.perf_counter() - started) * 1e3, 3)
    labels = dict(g.db.execute(
        select(Coin.coin_id, Coin.label).where(Coin.catalog_id == catalog_id, Coin.coin_id.in_([h[0] for h in hits]))
    ).all())
    want_thumbs = request.args.get("thumbnails") in ("1", "true")
    thumbs: dict[int, bytes] = {}
    if want_thumbs and hits:
        thumbs = dict(g.db.execute(
            select(ReferenceImage.id, ReferenceImage.thumbnail_jpeg).where(ReferenceImage.id.in_([h[2] for h in hits]))
        ).all())
    matches = []
    for coin_id, score, ref_id in hits:
        m: dict[str, Any] = {"coin_id": coin_id, "label": labels.get(coin_id, ""), "score": round(score, 6),
                             "reference_image_id": ref_id}
        if ref_id in thumbs:
            m["thumbnail"] = "data:image/jpeg;base64," + base64.b64encode(thumbs[ref_id]).decode("ascii")
        matches.append(m)
    return jsonify({"catalog_id": catalog_id, "matches": matches, "search_ms": search_ms,
                    "index_size": len(index), **extra})


@bp.get("/catalogs/<catalog_id>/duplicates")
@require_scope("maintainer")
def duplicates(catalog_id: str) -> Response:
    st = state()
    cat = _catalog(catalog_id)
    try:
        threshold = float(request.args.get("min_cosine", st.config.duplicate_cosine))
    except ValueError as exc:
        raise ApiError(400, "bad_threshold", "min_cosine must be a number") from exc
    if not -1.0 <= threshold <= 1.0:  # also refuses nan
        raise ApiError(400, "bad_threshold", "min_cosine must be between -1 and 1")
    pairs = st.index_for(g.db, cat).near_duplicates(threshold)
    return jsonify({"min_cosine": threshold, "pairs": [p.__dict__ for p in pairs]})


# ---------------------------------------------------------------- publish and device sync
@bp.post("/catalogs/<catalog_id>/publish")
@require_scope("maintainer")
def publish(catalog_id: str) -> tuple[Response, int]:
    st = state()
    cat = _catalog(catalog_id)
    body = _json_body() if request.content_length else {}
    unknown = sorted(set(body) - {"strict"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s) {', '.join(unknown)}; publish takes only 'strict'")
    strict = body.get("strict", False)
    if not isinstance(strict, bool):
        raise ApiError(400, "bad_field", "strict must be true or false")
    fingerprint = st.fingerprint(g.db, catalog_id)
    if fingerprint is None:
        raise ApiError(409, "nothing_to_publish", f"catalog {catalog_id!r} has no embedded reference images")
    dupes = st.index_for(g.db, cat).near_duplicates(st.config.duplicate_cosine)
    dupes_json = [p.__dict__ for p in dupes]
    if strict and dupes:
        raise ApiError(409, "near_duplicates", f"{len(dupes)} pairs of different coins look alike; "
                       "fix them or publish without strict", dupes_json)
    # One publish per catalog at a time in this process; across processes the unique version key decides.
    with st.publish_lock(catalog_id):
        result = publish_catalog(g.db, st.config.packs_dir, cat, fingerprint, st.config.pack_quant)
    return jsonify({**_version_json(result.version), "skipped_coins": result.skipped_coins,
                    "near_duplicates": dupes_json}), 201


@bp.get("/catalogs/<catalog_id>/manifest")
@require_scope(*BOTH)
def manifest(catalog_id: str) -> Response:
    st = state()
    _catalog(catalog_id)
    latest = latest_version(g.db, catalog_id)
    if latest is None:
        raise ApiError(404, "not_published", f"catalog {catalog_id!r} has no published version yet")
    now = datetime.now(UTC).replace(microsecond=0)
    payload = {
        "format": 1,
        "catalog_id": catalog_id,
        "issued_at": _iso(now),
        "expires_at": _iso(now + timedelta(seconds=st.config.manifest_ttl_s)),
        **_version_json(latest),
    }
    resp = jsonify(sign_payload(st.signing_key, payload))
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _send_versioned(catalog_id: str, version: int, kind: str) -> Response:
    st = state()
    _catalog(catalog_id)
    row = g.db.scalar(
        select(CatalogVersion).where(CatalogVersion.catalog_id == catalog_id, CatalogVersion.version == version)
    )
    if row is None:
        raise ApiError(404, "version_not_found", f"catalog {catalog_id!r} has no version {version}")
    name, sha = (row.pack_file, row.pack_sha256) if kind == "pack" else (row.delta_file, row.delta_sha256)
    if name is None or sha is None:
        raise ApiError(404, "no_delta", f"version {version} has no delta; download the full pack")
    path = st.config.packs_dir / catalog_id / name
    if not path.is_file():
        raise ApiError(410, "pack_missing", f"the file of version {version} is gone from the server's data dir")
    # Files are immutable per version: strong ETag = sha256, Range + If-None-Match handled by werkzeug.
    resp = send_file(path, mimetype="application/octet-stream", etag=sha, conditional=True, max_age=31536000,
                     download_name=f"{catalog_id}-{name}")
    resp.headers["X-Content-SHA256"] = sha
    resp.cache_control.immutable = True
    return resp


@bp.get("/catalogs/<catalog_id>/versions/<int(max=2147483647):version>/pack")
@require_scope(*BOTH)
def download_pack(catalog_id: str, version: int) -> Response:
    return _send_versioned(catalog_id, version, "pack")


@bp.get("/catalogs/<catalog_id>/versions/<int(max=2147483647):version>/delta")
@require_scope(*BOTH)
def download_delta(catalog_id: str, version: int) -> Response:
    return _send_versioned(catalog_id, version, "delta")
