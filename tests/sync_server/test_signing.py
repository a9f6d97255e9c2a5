"""Manifest signing key: created once in the data dir, reused, exported by the CLI, verifiable."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from coinvision.sdk.sync_client import canonical_json
from coinvision.sync_server.signing import load_or_create_key, public_key_b64, sign_payload
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


def _keys_public(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coinvision.cli.main", "keys", "public", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "COINVISION_DATA_DIR": "", "COINVISION_SIGNING_KEY": ""},
    )


def test_keys_public_cli_prints_the_server_key(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "signing_key.pem")  # what the server made on its first start
    out = _keys_public(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == public_key_b64(key)
    assert len(base64.b64decode(out.stdout.strip())) == 32


def test_keys_public_with_a_mistyped_data_dir_fails_and_creates_nothing(tmp_path: Path) -> None:
    """The probe: `keys public --data-dir /typo` exited 0 and made a fresh key devices would then trust."""
    typo = tmp_path / "typo"
    out = _keys_public(typo)
    assert out.returncode == 2 and out.stdout == ""
    assert "no signing key" in out.stderr and "does not exist" in out.stderr and "--data-dir" in out.stderr
    assert not typo.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _keys_public(empty)
    assert out.returncode == 2 and "no signing key" in out.stderr and list(empty.iterdir()) == []
