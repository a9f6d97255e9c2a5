"""OpenAPI 3.1 description of the JSON API at ``/openapi.json``, and a readable page of it at ``/docs``.

Generated, not hand-kept: every ``/v1`` route of the running app is walked (``app.url_map``); its path
parameters come from the URL rule, its token scopes from ``require_scope``, and its bodies from the pydantic
models its :func:`~coinvision.sync_server.schemas.doc` decorator names. A route without ``doc`` fails the
generation (and the test), so a new route cannot ship undescribed.
"""

from __future__ import annotations

import re
from typing import Any

from coinvision.sync_server.schemas import Error, OpDoc
from flask import Blueprint, Flask, Response, current_app, jsonify, render_template
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

__all__ = ["bp", "build_spec"]

bp = Blueprint("openapi", __name__, template_folder="templates")

_REF = "#/components/schemas/{model}"
_RULE_ARG = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_STATUS_TEXT = {
    200: "OK", 201: "Created", 206: "Partial Content", 304: "Not Modified", 400: "Bad request", 401: "Missing, "
    "invalid, revoked or expired token", 403: "Token of the wrong scope", 404: "Unknown catalog, coin, image or "
    "version", 405: "Method not allowed", 409: "Conflict", 410: "Gone (file past the retention)", 413: "Too large "
    "(bytes or pixels)", 415: "Unsupported media type or image format", 416: "Range not satisfiable", 422: "Cannot "
    "be processed", 429: "Rate limited (see Retry-After)", 500: "Integrity check failed or internal error",
    503: "No models loaded, or the database is busy",
}
_PY_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _models(ops: list[OpDoc]) -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {"Error": Error}
    for op in ops:
        for m in (op.request, op.alt_request, op.response, op.alt_response[1] if op.alt_response else None):
            if m is not None:
                seen.setdefault(m.__name__, m)
    return list(seen.values())


def _json_body(ref: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": ref}}}


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of every ``/v1`` route of ``app``."""
    routes: list[tuple[str, str, Any, OpDoc]] = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        view = app.view_functions[rule.endpoint]
        op = getattr(view, "__openapi__", None)
        if op is None:
            raise RuntimeError(f"route {rule.rule} ({rule.endpoint}) has no @doc(...); describe it in schemas.py")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((rule.rule, method.lower(), view, op))
    models = _models([op for *_, op in routes])
    refs, top = models_json_schema([(m, "serialization") for m in models], ref_template=_REF)
    ref = {m: refs[(m, "serialization")] for m in models}
    error = {"description": "error", **_json_body(ref[Error])}

    paths: dict[str, dict[str, Any]] = {}
    for rule, method, view, op in routes:
        params = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "integer" if conv == "int" else "string"}}
                  for conv, name in _RULE_ARG.findall(rule)]
        params += [{"name": q.name, "in": "query", "required": False, "description": q.description,
                    "schema": {"type": _PY_TYPES[q.type], **({"default": q.default} if q.default is not None else {})}}
                   for q in op.query]
        if method == "post" and view.__name__ == "publish":
            params.append({"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string",
                           "maxLength": 128}, "description": "a retry with the same key returns the same version"})
        ok: dict[str, Any] = {"description": _STATUS_TEXT.get(op.status, "OK")}
        if op.response is not None:
            ok.update(_json_body(ref[op.response]))
        else:
            ok["content"] = {op.binary_type: {"schema": {"type": "string", "format": "binary"}}}
        responses: dict[str, Any] = {str(op.status): ok}
        if op.alt_response is not None:
            status, model, text = op.alt_response
            responses[str(status)] = {"description": text, **_json_body(ref[model])}
        for status, text in op.extra_responses.items():
            same_body = 200 <= status < 300 and "content" in ok  # 201 created, 206 partial: the same kind of body
            responses[str(status)] = {"description": text, **({"content": ok["content"]} if same_body else {})}
        scopes: tuple[str, ...] = getattr(view, "__scopes__", ())
        for status in sorted({*op.errors, *((401, 403, 404) if scopes else ())}):
            responses[str(status)] = {**error, "description": _STATUS_TEXT.get(status, "error")}
        operation: dict[str, Any] = {
            "operationId": view.__name__,
            "summary": op.summary,
            "description": f"Token scope: {' or '.join(scopes)}." if scopes else "No token needed.",
            "responses": responses,
        }
        if scopes:
            operation["security"] = [{"bearer": []}]
        if params:
            operation["parameters"] = params
        if op.request is not None:
            kind = "multipart/form-data" if op.request_kind == "multipart" else "application/json"
            content = {kind: {"schema": ref[op.request]}}
            if op.alt_request is not None:
                content["multipart/form-data"] = {"schema": ref[op.alt_request]}
            operation["requestBody"] = {"required": view.__name__ != "publish", "content": content}
        path = _RULE_ARG.sub(r"{\2}", rule)
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "coinvision sync server", "version": "1",
                 "description": "Catalogs of coins, reference photos, signed packs for offline recognition. "
                                "Errors are JSON {code, message, detail}."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": top.get("$defs", {})},
        "paths": dict(sorted(paths.items())),
    }


def _spec() -> dict[str, Any]:
    cached = current_app.extensions.get("coinvision.openapi")
    if cached is None:
        cached = current_app.extensions["coinvision.openapi"] = build_spec(current_app)
    return cached


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(_spec())


def _type(schema: dict[str, Any]) -> str:
    """A short type text for the docs page: ``string``, ``list of Coin``, ``integer or null``."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return "list of " + _type(schema.get("items", {}))
    if schema.get("type") == "object" and "additionalProperties" in schema:
        return "map of " + _type(schema["additionalProperties"])
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    if schema.get("format") == "binary":
        return "file"
    return str(schema.get("type", "any"))


def _response_type(response: dict[str, Any]) -> str:
    content = response.get("content")
    return _type(next(iter(content.values())).get("schema", {})) if content else ""


@bp.get("/docs")
def docs() -> Response:
    spec = _spec()
    models = []
    for name, schema in spec["components"]["schemas"].items():
        required = set(schema.get("required", []))
        fields = [{"name": f, "type": _type(s), "required": f in required, "description": s.get("description", "")}
                  for f, s in schema.get("properties", {}).items()]
        models.append({"name": name, "description": schema.get("description", ""), "fields": fields})
    ops = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {})
            ops.append({
                "method": method.upper(), "path": path, "summary": op["summary"], "scope": op["description"],
                "params": op.get("parameters", []),
                "request": [(kind, _type(c["schema"])) for kind, c in body.items()],
                "responses": [(status, r["description"], _response_type(r)) for status, r in op["responses"].items()],
            })
    html = render_template("docs.html", ops=ops, models=models, title=spec["info"]["title"],
                           description=spec["info"]["description"])
    return Response(html, mimetype="text/html")
