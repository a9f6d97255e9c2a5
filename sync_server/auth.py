"""Bearer tokens: random secrets shown once, stored as sha256 hashes, each with one scope and an optional expiry.

Operators list and revoke them with ``coinvision token list|revoke``; an expired or revoked token gets 401.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from coinvision.sdk.errors import ConfigError
from coinvision.sync_server.api_errors import ApiError
from coinvision.sync_server.models import ApiToken
from flask import g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

__all__ = [
    "DEFAULT_EXPIRY", "SCOPES", "create_token", "hash_token", "list_tokens", "parse_duration", "require_scope",
    "revoke_token", "token_info",
]

SCOPES = ("maintainer", "device")
TOKEN_PREFIX = "cv_"
# Maintainer tokens are handed to people: they expire. Device tokens ship inside app builds, and an expired one
# would stop every install of that build from syncing, so they do not expire unless asked to.
DEFAULT_EXPIRY = {"maintainer": "90d", "device": "never"}
_DURATION = re.compile(r"^(\d{1,5})([hdw])$")
_UNIT_S = {"h": 3600, "d": 86400, "w": 7 * 86400}


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_duration(text: str) -> timedelta | None:
    """``'90d'``, ``'12h'``, ``'2w'`` -> timedelta; ``'never'`` -> None."""
    if text.strip().lower() == "never":
        return None
    m = _DURATION.match(text.strip().lower())
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"expiry {text!r} is not a duration; write e.g. 12h, 90d, 2w or never")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


def create_token(
    session: Session, scope: str, label: str = "", expires_in: timedelta | None = None
) -> str:
    """Store a new token's hash and return the secret (the only time it exists in clear)."""
    if scope not in SCOPES:
        raise ConfigError(f"scope {scope!r}: must be one of {', '.join(SCOPES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + expires_in if expires_in is not None else None
    session.add(ApiToken(token_hash=hash_token(token), scope=scope, label=label, expires_at=expires_at))
    session.commit()
    return token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)).all())


def token_info(t: ApiToken) -> dict[str, Any]:
    """What ``token list`` shows: never the secret (only its hash is stored) nor the hash."""
    now = datetime.now(UTC)
    expires = _aware(t.expires_at) if t.expires_at is not None else None
    state = "revoked" if t.revoked else "expired" if expires is not None and expires <= now else "active"
    return {"id": t.id, "scope": t.scope, "label": t.label, "state": state,
            "created_at": _aware(t.created_at).isoformat(timespec="seconds"),
            "expires_at": expires.isoformat(timespec="seconds") if expires else None}


def revoke_token(session: Session, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise ConfigError(f"no token with id {token_id}; `coinvision token list` shows the ids")
    row.revoked = True
    session.commit()
    return row


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)  # SQLite hands back naive UTC datetimes


def _current_scope(session: Session) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token; send 'Authorization: Bearer <token>'")
    digest = hash_token(token.strip())
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or row.revoked or not hmac.compare_digest(row.token_hash, digest):
        raise ApiError(401, "unauthorized", "invalid or revoked token")
    if row.expires_at is not None and _aware(row.expires_at) <= datetime.now(UTC):
        raise ApiError(401, "token_expired", f"this token expired at {_aware(row.expires_at).isoformat()}; ask an "
                       "operator for a new one (coinvision token create)")
    g.token_id = row.id
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

        wrapper.__scopes__ = allowed  # type: ignore[attr-defined]  # read by the OpenAPI generator
        return wrapper

    return deco
