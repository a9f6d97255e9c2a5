"""The JSON API (blueprint ``/v1``): catalogs, coins, reference images, search, publish, manifest, packs."""

from __future__ import annotations

import base64
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from coinvision.sdk.errors import CoinVisionError
from coinvision.sync_server import catalog_service as service
from coinvision.sync_server import schemas as S
from coinvision.sync_server.api_errors import ApiError
from coinvision.sync_server.auth import require_scope
from coinvision.sync_server.catalog_service import COIN_FIELDS
from coinvision.sync_server.errors import ContentRejectedError
from coinvision.sync_server.models import Catalog, CatalogVersion, Coin, ReferenceImage
from coinvision.sync_server.publish import checked_version, iso_utc, latest_version
from coinvision.sync_server.schemas import doc
from coinvision.sync_server.signing import sign_payload
from coinvision.sync_server.state import state
from coinvision.sync_server.uploads import decode_uploads, overlay_png
from flask import Blueprint, Response, g, jsonify, request, send_file
from sqlalchemy import func, or_, select
from werkzeug.http import parse_range_header

__all__ = ["bp"]

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/v1")

CATALOG_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_EXTRA_ITEMS = 32
MAX_EXTRA_CHARS = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Idempotency-Key header (draft-ietf-httpapi-idempotency-key-header): printable ASCII, bounded.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
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
    return service.get_catalog(g.db, catalog_id)


_iso = iso_utc


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


# ---------------------------------------------------------------- catalogs
@bp.get("/health")
@doc("Liveness (no token)", S.Health)
def health() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/catalogs")
@doc("List catalogs with coin counts and their newest version", S.CatalogList)
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
@doc("Create a catalog", S.CatalogRef, status=201, request=S.CatalogCreate, errors=(400, 409, 415))
@require_scope("maintainer")
def create_catalog() -> tuple[Response, int]:
    body = _json_body()
    cid = body.get("id")
    if not isinstance(cid, str) or not CATALOG_ID.match(cid):
        raise ApiError(400, "bad_catalog_id", "id must be 1-64 chars of a-z, 0-9, '-', '_' (starting alphanumeric)")
    name = _catalog_name(body.get("name", cid))
    service.create_catalog(g.db, cid, name)
    return jsonify({"id": cid, "name": name}), 201


def _catalog_name(value: object) -> str:
    try:
        return _text(value, "name", 200)
    except ApiError as exc:
        raise ApiError(400, "bad_name", f"{exc.message} (a catalog name is at most 200 characters of valid "
                       "Unicode text, without control characters)") from exc


@bp.patch("/catalogs/<catalog_id>")
@doc("Rename a catalog (its id cannot change)", S.CatalogRef, request=S.CatalogRename, errors=(400, 415))
@require_scope("maintainer")
def rename_catalog(catalog_id: str) -> Response:
    cat = _catalog(catalog_id)
    body = _json_body()
    unknown = sorted(set(body) - {"name"})
    if unknown or "name" not in body:
        raise ApiError(400, "unknown_field", "send {\"name\": \"...\"}; only the name of a catalog can change "
                       "(its id is in every device's cache)")
    name = _catalog_name(body["name"])
    if not name.strip():
        raise ApiError(400, "bad_name", "name is empty; give the catalog a name people will recognise")
    cat.name = name
    g.db.commit()
    return jsonify({"id": cat.id, "name": cat.name})


@bp.delete("/catalogs/<catalog_id>")
@doc(
    "Delete a catalog, its coins, photos, versions and pack files",
    S.CatalogDeleted,
    errors=(400,),
    query=(S.Param("confirm", str, "the catalog id again (required)"),),
)
@require_scope("maintainer")
def delete_catalog(catalog_id: str) -> Response:
    """Remove a catalog, its coins, references, versions, and their files. Devices keep their cached packs."""
    _catalog(catalog_id)
    if request.args.get("confirm") != catalog_id:
        raise ApiError(400, "confirmation_required", f"deleting catalog {catalog_id!r} removes every coin, photo and "
                       f"published version; repeat the request with ?confirm={catalog_id}")
    removed = service.delete_catalog(state(), g.db, catalog_id)
    return jsonify({"deleted": catalog_id, "photos_removed": removed})


@bp.get("/catalogs/<catalog_id>")
@doc("A catalog with its coins and published versions", S.CatalogDetail)
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
@doc("Published versions, oldest first", S.VersionList)
@require_scope(*BOTH)
def list_versions(catalog_id: str) -> Response:
    cat = _catalog(catalog_id)
    return jsonify({"versions": [_version_json(v) for v in cat.versions]})


# ---------------------------------------------------------------- coins and images
def _coin_fields(source: dict[str, Any], *, skip_empty: bool) -> dict[str, str]:
    """Checked metadata fields; with ``skip_empty`` an empty value means "leave as it is" (web forms)."""
    fields = {f: _text(source[f], f, n) for f, n in COIN_FIELDS.items() if f in source}
    return {f: v for f, v in fields.items() if v.strip()} if skip_empty else fields


@bp.put("/catalogs/<catalog_id>/coins/<coin_id>")
@doc(
    "Create or update a coin's metadata (omitted fields keep their value)",
    S.Coin,
    request=S.CoinFields,
    errors=(400, 409, 415),
    extra_responses={201: "created (same body)"},
)
@require_scope("maintainer")
def put_coin(catalog_id: str, coin_id: str) -> tuple[Response, int]:
    """Create or update a coin. Fields left out keep their value; a field sent as "" is cleared."""
    _catalog(catalog_id)
    service.check_coin_id(coin_id)
    body = _json_body()
    unknown = sorted(set(body) - set(COIN_FIELDS) - {"extra"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s) {', '.join(unknown)}; allowed: "
                       f"{', '.join([*COIN_FIELDS, 'extra'])}")
    fields = _coin_fields(body, skip_empty=False)
    extra = _extra(body["extra"]) if "extra" in body else None
    coin, created = service.save_coin(g.db, catalog_id, coin_id, fields, extra)
    return jsonify(_coin_json(coin)), 201 if created else 200


@bp.delete("/catalogs/<catalog_id>/coins/<coin_id>")
@doc("Delete a coin, its references and their photo files", S.CoinDeleted)
@require_scope("maintainer")
def delete_coin(catalog_id: str, coin_id: str) -> Response:
    done = service.delete_coin(state(), g.db, catalog_id, coin_id)
    return jsonify({"deleted": coin_id, "images_removed": done.images_removed, "photos_removed": done.photos_removed})


@bp.get("/catalogs/<catalog_id>/coins")
@doc(
    "Coins, searchable and paged",
    S.CoinPage,
    errors=(400,),
    query=(
        S.Param("q", str, "matches id, label, country, currency, denomination, side, years (case-insensitive)"),
        S.Param("offset", int, "first coin", 0),
        S.Param("limit", int, "coins per page, 1..1000", 1000),
    ),
)
@require_scope(*BOTH)
def list_coins(catalog_id: str) -> Response:
    """Coins, with image counts and one reference image id (thumbnail); ``q`` filters, ``offset``/``limit`` page."""
    _catalog(catalog_id)
    offset, limit = _int_arg("offset", 0, 0, 10**9), _int_arg("limit", 1000, 1, 1000)
    where = [Coin.catalog_id == catalog_id]
    q = request.args.get("q", "").strip()
    if q:
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append(or_(*(getattr(Coin, f).ilike(like, escape="\\") for f in ("coin_id", *COIN_FIELDS))))
    total = g.db.scalar(select(func.count()).select_from(Coin).where(*where)) or 0
    rows = g.db.execute(
        select(Coin, func.count(ReferenceImage.id), func.min(ReferenceImage.id))
        .outerjoin(ReferenceImage, ReferenceImage.coin_pk == Coin.id)
        .where(*where).group_by(Coin.id).order_by(Coin.coin_id).offset(offset).limit(limit)
    ).all()
    coins = [{**_coin_json(c, n), "thumbnail_image_id": first} for c, n, first in rows]
    return jsonify({"coins": coins, "total": total, "offset": offset, "limit": limit})


@bp.get("/catalogs/<catalog_id>/coins/<coin_id>")
@doc("One coin with its reference images", S.CoinDetail)
@require_scope(*BOTH)
def get_coin(catalog_id: str, coin_id: str) -> Response:
    _catalog(catalog_id)
    coin = service.get_coin(g.db, catalog_id, coin_id)
    images = [{"id": i.id, "filename": i.filename, "sha256": i.sha256, "width_px": i.width_px, "height_px": i.height_px,
               "created_at": _iso(i.created_at), "model_fingerprint": i.model_fingerprint}
              for i in sorted(coin.images, key=lambda i: i.id)]
    return jsonify({**_coin_json(coin, len(images)), "images": images})


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError as exc:
        raise ApiError(400, f"bad_{name}", f"{name}={raw!r} is not an integer") from exc
    if not lo <= value <= hi:
        raise ApiError(400, f"bad_{name}", f"{name}={value} must be in {lo}..{hi}")
    return value


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


@bp.post("/catalogs/<catalog_id>/coins/<coin_id>/images")
@doc(
    "Upload reference photos: embedded, stored, indexed (all or nothing)",
    S.UploadResult,
    status=201,
    request=S.UploadForm,
    request_kind="multipart",
    errors=(400, 409, 413, 415, 422, 503),
)
@require_scope("maintainer")
def upload_images(catalog_id: str, coin_id: str) -> tuple[Response, int]:
    """Upload reference photos (multipart ``image``, 1..16). Form fields ``label``, ``country`` ... set the coin's
    metadata where they are not empty; ``create=1`` creates a missing coin, in the same transaction as its photos
    (a refused upload creates nothing)."""
    cfg = state().config
    _catalog(catalog_id)
    if not (request.mimetype or "").startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "upload images as multipart/form-data, field 'image'")
    unknown = sorted(set(request.form) - set(COIN_FIELDS) - {"create"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown form field(s) {', '.join(unknown)}; allowed: image, create, "
                       f"{', '.join(COIN_FIELDS)}")
    fields = _coin_fields(request.form.to_dict(), skip_empty=True)
    create = _truthy(request.form.get("create"))
    service.upload_target(g.db, catalog_id, coin_id, create=create)  # a missing coin fails before decoding
    files = request.files.getlist("image")
    if not files:
        raise ApiError(400, "no_image", "no file in form field 'image'")
    if len(files) > cfg.max_images_per_request:
        raise ApiError(413, "too_many_images", f"at most {cfg.max_images_per_request} images per request")
    photos = decode_uploads(files, max_bytes=cfg.max_image_bytes, max_pixels=cfg.max_image_pixels,
                            max_total_pixels=cfg.max_request_pixels)
    added = service.add_references(state(), g.db, catalog_id, coin_id, photos, fields=fields, create=create)
    return jsonify({
        "coin_id": coin_id,
        "coin_created": added.coin_created,
        "coin": _coin_json(added.coin),
        "images": [
            {"id": a.row.id, "filename": a.row.filename, "sha256": a.row.sha256,
             "coin_found": a.embedding.segmentation.found, "model_fingerprint": a.row.model_fingerprint}
            for a in added.references
        ],
    }), 201


@bp.delete("/images/<int(max=9223372036854775807):image_id>")
@doc("Delete a reference image (its photo file goes with the last reference to it)", S.ImageDeleted)
@require_scope("maintainer")
def delete_image(image_id: int) -> Response:
    photo_removed = service.delete_reference(state(), g.db, image_id)
    return jsonify({"deleted": image_id, "photo_removed": photo_removed})


@bp.get("/images/<int(max=9223372036854775807):image_id>/thumbnail")
@doc("JPEG thumbnail of a reference image (longer side 160 px)", None, binary_type="image/jpeg")
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
        # Device tokens ship inside apps, so anyone can reach this: a per-client rate and a lower pixel limit.
        st.search_limiter.take(request.remote_addr or "unknown", "photo search")
        pixels = min(st.config.max_search_pixels, st.config.max_image_pixels)
        up = decode_uploads(files, max_bytes=st.config.max_image_bytes, max_pixels=pixels, max_total_pixels=pixels)[0]
        started = time.perf_counter()
        try:
            emb = st.embedder().embed(up.image)
        except CoinVisionError as exc:
            raise ContentRejectedError("embedding_failed", str(exc)) from exc
        extra["embed_ms"] = round((time.perf_counter() - started) * 1e3, 2)
        seg = emb.segmentation
        extra["segmentation"] = {"found": seg.found, "bbox": list(seg.bbox) if seg.bbox else None}
        if request.args.get("overlay") in ("1", "true"):
            png = overlay_png(up.image, seg.mask)
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
@doc(
    "Top-k coins for a photo (multipart) or an embedding (JSON), with the unknown verdict",
    S.SearchResult,
    request=S.SearchEmbedding,
    alt_request=S.SearchPhoto,
    request_kind="json-or-multipart",
    errors=(400, 413, 415, 422, 429, 503),
    query=(
        S.Param("top_k", int, "1..50", 5),
        S.Param("overlay", str, "1: include the segmentation overlay"),
        S.Param("thumbnails", str, "1: include a thumbnail per match"),
    ),
)
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
    threshold = st.unknown_threshold()
    best = hits[0][1] if hits else None
    matches = []
    for coin_id, score, ref_id in hits:
        m: dict[str, Any] = {"coin_id": coin_id, "label": labels.get(coin_id, ""), "score": round(score, 6),
                             "reference_image_id": ref_id}
        if ref_id in thumbs:
            m["thumbnail"] = "data:image/jpeg;base64," + base64.b64encode(thumbs[ref_id]).decode("ascii")
        matches.append(m)
    # "unknown": the best cosine is below the embedder's calibrated threshold (or the catalog is empty): a client
    # must not name a coin then, exactly as the phone's Recognizer does.
    unknown = best is None or (threshold is not None and best < threshold)
    return jsonify({"catalog_id": catalog_id, "matches": matches, "unknown": unknown, "threshold": threshold,
                    "search_ms": search_ms, "index_size": len(index), **extra})


@bp.get("/catalogs/<catalog_id>/duplicates")
@doc(
    "Pairs of different coins whose references look alike",
    S.Duplicates,
    errors=(400,),
    query=(S.Param("min_cosine", float, "-1..1", 0.97),),
)
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
@bp.get("/catalogs/<catalog_id>/changes")
@doc("What publishing now would change since the newest version", S.Changes, errors=(410,))
@require_scope("maintainer")
def changes(catalog_id: str) -> Response:
    """What publishing now would change since the newest version (read from that version's pack)."""
    return jsonify(service.pending_changes(state(), g.db, catalog_id))


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip().strip('"')
    if not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "bad_idempotency_key", "Idempotency-Key must be 1-128 printable ASCII characters "
                       "(a UUID is a good choice)")
    return key


@bp.post("/catalogs/<catalog_id>/publish")
@doc(
    "Freeze the next version: signed record, full pack, delta from the previous one",
    S.PublishResult,
    status=201,
    request=S.PublishRequest,
    errors=(400, 409, 422),
    alt_response=(200, S.PublishReplayed, "a retry with the same Idempotency-Key: the version the first attempt made"),
)
@require_scope("maintainer")
def publish(catalog_id: str) -> tuple[Response, int]:
    """Freeze version N+1. With an ``Idempotency-Key`` header a retry (reply lost) returns the version the first
    attempt made (200, ``Idempotent-Replayed: true``) instead of making another."""
    _catalog(catalog_id)
    body = _json_body() if request.content_length else {}
    unknown = sorted(set(body) - {"strict"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s) {', '.join(unknown)}; publish takes only 'strict'")
    strict = body.get("strict", False)
    if not isinstance(strict, bool):
        raise ApiError(400, "bad_field", "strict must be true or false")
    out = service.publish(state(), g.db, catalog_id, strict=strict, idempotency_key=_idempotency_key())
    if out.replayed:
        resp = jsonify({**_version_json(out.version), "replayed": True})
        resp.headers["Idempotent-Replayed"] = "true"
        return resp, 200
    return jsonify({**_version_json(out.version), "skipped_coins": out.skipped_coins,
                    "near_duplicates": [p.__dict__ for p in out.near_duplicates]}), 201


@bp.get("/catalogs/<catalog_id>/manifest")
@doc("Signed manifest of the newest version (what devices verify)", S.Manifest, errors=(500,))
@require_scope(*BOTH)
def manifest(catalog_id: str) -> Response:
    st = state()
    _catalog(catalog_id)
    latest = latest_version(g.db, catalog_id)
    if latest is None:
        raise ApiError(404, "not_published", f"catalog {catalog_id!r} has no published version yet")
    checked_version(st.signing_key, latest)  # only a record signed at publish time is named in a manifest
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
    stored = service.version_file(state(), g.db, catalog_id, version, kind)
    name, sha = stored.name, stored.sha256
    # RFC 9110 14.2: a Range header that does not parse, or names a unit other than bytes, is ignored (full 200).
    if "HTTP_RANGE" in request.environ:
        parsed = parse_range_header(request.environ["HTTP_RANGE"])
        if parsed is None or parsed.units != "bytes":
            del request.environ["HTTP_RANGE"]
    # Files are immutable per version: strong ETag = sha256, Range + If-None-Match handled by werkzeug.
    resp = send_file(stored.path, mimetype="application/octet-stream", etag=sha, conditional=True, max_age=31536000,
                     download_name=f"{catalog_id}-{name}")
    resp.headers["X-Content-SHA256"] = sha
    # The route needs a token: only the client may keep it (a shared cache must not hand it to others).
    resp.cache_control.public = False
    resp.cache_control.private = True
    resp.cache_control.immutable = True
    return resp


@bp.get("/catalogs/<catalog_id>/versions/<int(max=2147483647):version>/pack")
@doc(
    "Download a version's full pack (immutable; strong ETag = sha256)",
    None,
    errors=(410, 500),
    extra_responses={206: "partial content (Range)", 304: "not modified (If-None-Match)", 416: "range not satisfiable"},
)
@require_scope(*BOTH)
def download_pack(catalog_id: str, version: int) -> Response:
    return _send_versioned(catalog_id, version, "pack")


@bp.get("/catalogs/<catalog_id>/versions/<int(max=2147483647):version>/delta")
@doc(
    "Download the delta from the previous version (immutable; strong ETag = sha256)",
    None,
    errors=(410, 500),
    extra_responses={206: "partial content (Range)", 304: "not modified (If-None-Match)", 416: "range not satisfiable"},
)
@require_scope(*BOTH)
def download_delta(catalog_id: str, version: int) -> Response:
    return _send_versioned(catalog_id, version, "delta")
