"""OpenAPI 3.1 description of the JSON API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

__all__ = ["SPEC", "bp"]

bp = Blueprint("openapi", __name__)

_ERR = {"$ref": "#/components/responses/Error"}
_AUTH_ERRS = {"401": _ERR, "403": _ERR, "404": _ERR}


def _op(summary: str, scopes: str, ok: str = "200", body: dict[str, Any] | None = None, **errs: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "description": f"Token scope: {scopes}.",
        "security": [{"bearer": []}],
        "responses": {ok: {"description": "OK"}, **_AUTH_ERRS, **{k.lstrip("_"): _ERR for k in errs}},
    }
    if body is not None:
        op["requestBody"] = body
    return op


_JSON = {"content": {"application/json": {"schema": {"type": "object"}}}}
_IMAGES = {"content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}
_BINARY = {"type": "string", "format": "binary"}
_SEARCH = {"content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"image": _BINARY}}},
    "application/json": {"schema": {"type": "object", "properties": {
        "embedding": {"type": "array", "items": {"type": "number"}}}}},
}}
_CAT = {"name": "catalog_id", "in": "path", "required": True, "schema": {"type": "string"}}
_COIN = {"name": "coin_id", "in": "path", "required": True, "schema": {"type": "string"}}
_VER = {"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}}
_PACK_DL = {
    "summary": "Download a pack/delta (immutable; strong ETag = sha256; If-None-Match -> 304; Range -> 206)",
    "security": [{"bearer": []}],
    "parameters": [_CAT, _VER],
    "responses": {"200": {"description": "bytes"}, "206": {"description": "partial content"},
                  "304": {"description": "not modified"}, "416": {"description": "range not satisfiable"},
                  **_AUTH_ERRS},
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "coinvision sync server", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "detail": {}}}},
        "responses": {"Error": {"description": "error", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
    },
    "paths": {
        "/v1/health": {"get": {"summary": "liveness", "responses": {"200": {"description": "OK"}}}},
        "/v1/catalogs": {
            "get": _op("List catalogs", "maintainer or device"),
            "post": _op("Create a catalog {id, name}", "maintainer", "201", _JSON, _400=1, _409=1, _415=1),
        },
        "/v1/catalogs/{catalog_id}": {"parameters": [_CAT], "get": _op("Catalog, coins, versions", "any")},
        "/v1/catalogs/{catalog_id}/coins": {"parameters": [_CAT], "get": _op("List coins", "any")},
        "/v1/catalogs/{catalog_id}/coins/{coin_id}": {
            "parameters": [_CAT, _COIN],
            "put": _op("Create or update a coin's metadata (label, country, currency, denomination, side, years, "
                       "extra)", "maintainer", "200", _JSON, _201=1, _400=1, _415=1),
            "delete": _op("Remove a coin and its reference images", "maintainer"),
        },
        "/v1/catalogs/{catalog_id}/coins/{coin_id}/images": {
            "parameters": [_CAT, _COIN],
            "post": _op("Upload reference images (embedded by the release model, indexed)", "maintainer", "201",
                        _IMAGES, _400=1, _413=1, _415=1, _422=1, _503=1),
        },
        "/v1/images/{image_id}": {"delete": _op("Remove a reference image", "maintainer")},
        "/v1/images/{image_id}/thumbnail": {"get": _op("JPEG thumbnail of a reference image", "any")},
        "/v1/catalogs/{catalog_id}/search": {
            "parameters": [_CAT, {"name": "top_k", "in": "query", "schema": {"type": "integer"}}],
            "post": _op("Top-k coins for a photo or an embedding", "any", "200", _SEARCH, _400=1, _413=1, _415=1),
        },
        "/v1/catalogs/{catalog_id}/duplicates": {
            "parameters": [_CAT], "get": _op("Near-duplicate coin pairs (cosine >= min_cosine)", "maintainer"),
        },
        "/v1/catalogs/{catalog_id}/changes": {
            "parameters": [_CAT], "get": _op("What publishing now would change since the newest version", "maintainer"),
        },
        "/v1/catalogs/{catalog_id}/publish": {
            "parameters": [_CAT],
            "post": _op("Freeze the next version: full pack + delta from the previous one", "maintainer", "201",
                        _JSON, _409=1),
        },
        "/v1/catalogs/{catalog_id}/versions": {"parameters": [_CAT], "get": _op("Published versions", "any")},
        "/v1/catalogs/{catalog_id}/manifest": {
            "parameters": [_CAT],
            "get": _op("Signed manifest of the latest version: {payload, signature (Ed25519 over canonical JSON of "
                       "payload), key_id}", "any"),
        },
        "/v1/catalogs/{catalog_id}/versions/{version}/pack": {"get": _PACK_DL},
        "/v1/catalogs/{catalog_id}/versions/{version}/delta": {"get": _PACK_DL},
    },
}


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(SPEC)
