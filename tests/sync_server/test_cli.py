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



def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Poll /v1/health until the server answers; raise if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(url + "/v1/health", timeout=10).ok:
                return
        except requests.RequestException:  # refused, or accepted by the master while workers still boot
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
        time.sleep(0.3)

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
        _wait_healthy(url, proc)
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.post(url + "/v1/catalogs", json={"id": "cli"}, headers=auth, timeout=10).status_code == 201
        assert requests.get(url + "/v1/catalogs", timeout=10).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert (tmp_path / "signing_key.pem").is_file()


def test_gunicorn_production_command_with_several_workers(db_url: str, tmp_path: Path) -> None:
    """The documented production start (docs/SYNC_SERVER.md): three workers migrate one empty database at once."""
    port = _free_port()
    env = {"COINVISION_DATA_DIR": str(tmp_path / "data"), "COINVISION_DB_URL": db_url}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [str(gunicorn), "--workers", "3", "--worker-class", "gthread", "--threads", "4", "--bind",
         f"127.0.0.1:{port}", "coinvision.sync_server.app:create_app()"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        token = _cli("token", "create", "--scope", "maintainer", env=env)
        assert token.returncode == 0, token.stderr
        auth = {"Authorization": f"Bearer {token.stdout.strip()}"}
        assert requests.post(url + "/v1/catalogs", json={"id": "prod"}, headers=auth, timeout=10).status_code == 201
        # requests spread over the workers: each one is up, on the migrated schema, sees the same data
        listed = [requests.get(url + "/v1/catalogs", headers=auth, timeout=10) for _ in range(12)]
        assert {r.status_code for r in listed} == {200}
        assert all([c["id"] for c in r.json()["catalogs"]] == ["prod"] for r in listed)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out and "Worker failed to boot" not in out, out
