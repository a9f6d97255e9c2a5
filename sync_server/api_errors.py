"""Every error leaves the API as JSON ``{code, message, detail}``, from one handler; a person who opens a page
in a browser (not under ``/v1/``) gets the same message as a readable HTML page.

Domain errors (:mod:`coinvision.sync_server.errors`, raised by the service layer) become HTTP statuses here and
only here (:data:`STATUS_OF`). :class:`ApiError` is for what only the HTTP layer knows: a request that does not
parse, a missing token.
"""

from __future__ import annotations

import logging
from typing import Any

from coinvision.sync_server.errors import (
    ConflictError,
    ContentRejectedError,
    GoneError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    StoredDataError,
    TooLargeError,
    UnavailableError,
    UnsupportedFormatError,
)
from flask import Flask, jsonify, render_template, request
from sqlalchemy.exc import DataError, OperationalError
from werkzeug.exceptions import HTTPException

__all__ = ["STATUS_OF", "ApiError", "register_error_handlers", "status_of"]

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the HTTP layer refuses before any catalog operation runs; ``status`` is the HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail
        self.headers = headers or {}


# The one mapping from domain error kinds to HTTP statuses; a subclass not listed takes its nearest base's.
STATUS_OF: dict[type[ServerError], int] = {
    InvalidInputError: 400,
    NotFoundError: 404,
    ConflictError: 409,
    GoneError: 410,
    TooLargeError: 413,
    UnsupportedFormatError: 415,
    ContentRejectedError: 422,
    RateLimitedError: 429,
    StoredDataError: 500,
    UnavailableError: 503,
}


def status_of(exc: ServerError) -> int:
    """The HTTP status of a domain error: its class's entry in :data:`STATUS_OF`, else its nearest base's."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 500  # a ServerError kind nobody mapped: a server bug, not the client's fault


def _body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "detail": detail}


def _wants_page() -> bool:
    """A browser navigating to a page: not the API, and HTML preferred over JSON."""
    if request.path.startswith(("/v1/", "/static/")) or request.path == "/openapi.json":
        return False
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _page(status: int, title: str, message: str):
    return render_template("error.html", status=status, title=title, message=message), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(_body(exc.code, exc.message, exc.detail)), exc.status, exc.headers

    @app.errorhandler(ServerError)
    def _domain_error(exc: ServerError):
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, RateLimitedError) else {}
        return jsonify(_body(exc.code, exc.message, exc.detail)), status_of(exc), headers

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        status = exc.code or 500
        if _wants_page():
            message = ("There is no page at this address. The catalogs are on the start page."
                       if status == 404 else exc.description or exc.name or "error")
            return _page(status, exc.name or "Error", message)
        return jsonify(_body(code, exc.description or exc.name or "error")), status

    @app.errorhandler(OperationalError)
    def _db_busy(exc: OperationalError):
        log.warning("database error: %s", exc)
        return jsonify(_body("database_busy", "the database is busy or unavailable; retry shortly")), 503

    @app.errorhandler(DataError)
    def _bad_value(exc: DataError):
        # The database refused a value the API checks missed (out-of-range number, over-long text).
        log.warning("database refused a value: %s", exc)
        return jsonify(_body("bad_value", "a value in the request is out of range or too long for its field")), 400

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        if _wants_page():
            return _page(500, "Internal Server Error", "Something went wrong on the server; the operator finds the "
                         "details in the server log.")
        return jsonify(_body("internal_error", "internal server error; see the server log")), 500
