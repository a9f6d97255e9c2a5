"""Every error leaves the API as JSON ``{code, message, detail}``, from one handler; a person who opens a page
in a browser (not under ``/v1/``) gets the same message as a readable HTML page."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, render_template, request
from sqlalchemy.exc import DataError, OperationalError
from werkzeug.exceptions import HTTPException

__all__ = ["ApiError", "register_error_handlers"]

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client caused or must know about; ``status`` is the HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail
        self.headers = headers or {}


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
