"""Every error leaves the API as JSON ``{code, message, detail}``, from one handler."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
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


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(_body(exc.code, exc.message, exc.detail)), exc.status, exc.headers

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(_body(code, exc.description or exc.name or "error")), exc.code or 500

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
        return jsonify(_body("internal_error", "internal server error; see the server log")), 500
