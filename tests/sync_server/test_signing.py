"""Manifest signing key: created once in the data dir, reused, exported by the CLI, verifiable."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from coinvision.sync_server.signing import canonical_json, load_or_create_key, public_key_b64, sign_payload
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def test_load_or_create_key_creates_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "d" / "signing_key.pem"
    key = load_or_create_key(path)
    assert path.is_file() and (path.stat().st_mode & 0o077) == 0
    again = load_or_create_key(path)
    assert public_key_b64(again) == public_key_b64(key)
    assert not list(path.parent.glob("*.tmp"))


def test_sign_payload_verifies_and_detects_changes(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k.pem")
    doc = sign_payload(key, {"version": 3, "catalog_id": "euro"})
    pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64(key)))
    pub.verify(base64.b64decode(doc["signature"]), canonical_json(doc["payload"]))
    with pytest.raises(InvalidSignature):
        pub.verify(base64.b64decode(doc["signature"]), canonical_json({**doc["payload"], "version": 2}))


def test_keys_public_cli_prints_the_server_key(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "coinvision.sdk.cli", "keys", "public", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COINVISION_DATA_DIR": ""},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == public_key_b64(load_or_create_key(tmp_path / "signing_key.pem"))
    assert len(base64.b64decode(out.stdout.strip())) == 32
