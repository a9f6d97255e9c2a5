"""Bearer tokens: random secrets shown once, stored as sha256 hashes, each with one scope."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

from coinvision.sync_server.api_errors import ApiError
from coinvision.sync_server.models import ApiToken
from flask import g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

__all__ = ["SCOPES", "create_token", "hash_token", "require_scope"]

SCOPES = ("maintainer", "device")
TOKEN_PREFIX = "cv_"


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, scope: str, label: str = "") -> str:
    """Store a new token's hash and return the secret (the only time it exists in clear)."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}: must be one of {', '.join(SCOPES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(token_hash=hash_token(token), scope=scope, label=label))
    session.commit()
    return token


def _current_scope(session: Session) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token; send 'Authorization: Bearer <token>'")
    digest = hash_token(token.strip())
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or row.revoked or not hmac.compare_digest(row.token_hash, digest):
        raise ApiError(401, "unauthorized", "invalid or revoked token")
    return row.scope


def require_scope(*allowed: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: 401 without a valid token, 403 when its scope is not in ``allowed``."""

    def deco(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            scope = _current_scope(g.db)
            if scope not in allowed:
                raise ApiError(403, "forbidden", f"this needs a {' or '.join(allowed)} token; yours is {scope}")
            g.scope = scope
            return view(*args, **kwargs)

        return wrapper

    return deco
