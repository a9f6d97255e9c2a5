"""Ed25519 signing. The key lives in the data dir (created on first start) or at ``COINVISION_SIGNING_KEY``,
never in the database; devices ship the public key.

Two things are signed, both as canonical JSON (sorted keys, no spaces, UTF-8): the SDK's
:func:`coinvision.sdk.sync_client.canonical_json`, the one definition devices verify against:

- the manifest's ``payload`` (what devices verify), made per request;
- each published version's record (:func:`sign_record`), made once at publish time over what was published and
  stored beside the version row. The server checks it (:func:`verify_record`) before it names that version in a
  manifest or serves its files, so a database edit alone cannot make the server sign or ship a forged pack.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from coinvision.sdk.errors import ConfigError
from coinvision.sdk.sync_client import canonical_json
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "load_key", "load_or_create_key", "public_key_b64", "sign_payload", "sign_record",
    "verify_record",
]


def load_key(path: Path) -> Ed25519PrivateKey:
    """Read an existing key; never creates one (``coinvision keys public`` must not invent a key on a typo)."""
    if not path.is_file():
        hint = "check --data-dir" if path.parent.is_dir() else f"folder {path.parent} does not exist; check --data-dir"
        raise ConfigError(f"no signing key at {path}: {hint} (the server creates the key on its first start)")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable PEM private key ({exc}); restore it from the backup") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key; move it away to let the server make a new one")
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if path.is_file():
        return load_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    # Two workers starting at once: the first rename wins, the second loads the winner's key.
    try:
        os.link(tmp, path)
    except FileExistsError:
        os.unlink(tmp)
        return load_or_create_key(path)
    os.unlink(tmp)
    return key


def public_key_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(public_key_raw(key)).decode("ascii")


def key_id(key: Ed25519PrivateKey) -> str:
    return hashlib.sha256(public_key_raw(key)).hexdigest()[:16]


def sign_payload(key: Ed25519PrivateKey, payload: dict[str, Any]) -> dict[str, Any]:
    signature = key.sign(canonical_json(payload))
    return {"payload": payload, "signature": base64.b64encode(signature).decode("ascii"), "key_id": key_id(key)}


def sign_record(key: Ed25519PrivateKey, record: dict[str, Any]) -> str:
    """Base64 Ed25519 signature over a version record (canonical JSON)."""
    return base64.b64encode(key.sign(canonical_json(record))).decode("ascii")


def verify_record(key: Ed25519PrivateKey, record: dict[str, Any], signature: str | None) -> bool:
    if not signature:
        return False
    try:
        key.public_key().verify(base64.b64decode(signature, validate=True), canonical_json(record))
    except (InvalidSignature, ValueError):
        return False
    return True
