"""``coinvision serve`` / ``token create`` as an operator runs them: subprocesses, a real port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coinvision.sdk.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_token_create_and_serve_accept_that_token(tmp_path: Path, tiny_models_dir: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cv.db'}"
    out = _cli("token", "create", "--scope", "maintainer", "--db", db, "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("cv_") and len(token) > 30
    assert _cli("token", "create", "--scope", "root", "--db", db).returncode == 2  # argparse refuses it

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coinvision.sdk.cli", "serve", "--port", str(port), "--db", db,
         "--data-dir", str(tmp_path), "--models", str(tiny_models_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/v1/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.post(url + "/v1/catalogs", json={"id": "cli"}, headers=auth, timeout=10).status_code == 201
        assert requests.get(url + "/v1/catalogs", timeout=10).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert (tmp_path / "signing_key.pem").is_file()
