"""The server's domain errors: what a catalog operation refuses, in words, without HTTP.

Each error carries a stable ``code`` (clients switch on it; the JSON API sends it as ``code``) and an optional
JSON-able ``detail``. Which HTTP status each kind becomes is decided in one place,
:data:`coinvision.sync_server.api_errors.STATUS_OF`, so the service layer never names a status.
"""

from __future__ import annotations

from typing import Any

from coinvision.sdk.errors import CoinVisionError

__all__ = [
    "ConflictError",
    "ContentRejectedError",
    "GoneError",
    "InvalidInputError",
    "NotFoundError",
    "RateLimitedError",
    "ServerError",
    "StoredDataError",
    "TooLargeError",
    "UnavailableError",
    "UnsupportedFormatError",
]


class ServerError(CoinVisionError):
    """A catalog operation the server refuses. ``code`` names the reason for programs, the message for people."""

    def __init__(self, code: str, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.detail = code, message, detail


class NotFoundError(ServerError):
    """No such catalog, coin, reference image or version."""


class ConflictError(ServerError):
    """The operation collides with the catalog's current state (exists already, nothing to publish, a concurrent
    writer won); retrying later or changing the catalog first may succeed."""


class InvalidInputError(ServerError, ValueError):
    """An argument is malformed or outside its allowed range (a bad coin id, an empty file, an unsafe name)."""


class TooLargeError(ServerError):
    """An input is above a size limit (bytes, pixels, images per request)."""


class UnsupportedFormatError(ServerError):
    """An input is of a type or format the server does not accept."""


class ContentRejectedError(ServerError):
    """Well-formed input the pipeline cannot process: a photo that cannot be embedded, a catalog the pack format
    refuses."""


class GoneError(ServerError):
    """The thing existed but is no longer kept (a version's files past the retention, an unreadable pack)."""


class StoredDataError(ServerError):
    """Something the server stored fails its integrity check (a version record or file changed behind its back);
    the server refuses to use it and an operator must investigate."""


class UnavailableError(ServerError):
    """The server cannot do this now (started without models, models unusable)."""


class RateLimitedError(ServerError):
    """Too many costly requests from one client; ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__("rate_limited", message, {"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s
