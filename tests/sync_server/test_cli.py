"""``coinvision serve`` / ``token create`` as an operator runs them: subprocesses, a real port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from coinvision.sync_server.auth import hash_token
from coinvision.sync_server.signing import load_key, public_key_b64

from tests.sync_server.helpers import Server, populate, sample_coins


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coinvision.cli.main", *args], capture_output=True, text=True,
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
    # the first setup step made the data dir (0700) and its key: the app's public key can be read before serving
    assert (tmp_path.stat().st_mode & 0o077) == 0
    public = _cli("keys", "public", "--data-dir", str(tmp_path), env={"COINVISION_SIGNING_KEY": ""})
    assert public.returncode == 0 and public.stdout.strip() == public_key_b64(load_key(tmp_path / "signing_key.pem"))

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "coinvision.cli.main", "serve", "--port", str(port), "--db", db,
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


def test_token_list_revoke_and_expiry_from_the_cli(sqlite_server: Server, tmp_path: Path) -> None:
    s = sqlite_server
    cfg = s.state.config
    args = ("--db", cfg.db_url, "--data-dir", str(cfg.data_dir))
    made = _cli("token", "create", "--scope", "maintainer", "--label", "alice laptop", "--expires-in", "2h", *args)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    device = _cli("token", "create", "--scope", "device", "--label", "android 1.4", *args)
    assert device.returncode == 0
    assert _cli("token", "create", "--scope", "device", "--expires-in", "soon", *args).returncode == 2

    listed = _cli("token", "list", "--json", *args)
    assert listed.returncode == 0, listed.stderr
    rows = {r["label"]: r for r in json.loads(listed.stdout)}
    alice, app = rows["alice laptop"], rows["android 1.4"]
    assert alice["scope"] == "maintainer" and alice["state"] == "active" and alice["expires_at"]
    assert app["expires_at"] is None  # device tokens ship in app builds: no expiry unless asked
    assert token not in listed.stdout and hash_token(token) not in listed.stdout
    table = _cli("token", "list", *args).stdout
    assert "alice laptop" in table and "never" in table

    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(s.url + "/v1/catalogs", headers=auth, timeout=10).status_code == 200
    revoked = _cli("token", "revoke", str(alice["id"]), *args)
    assert revoked.returncode == 0 and "revoked token" in revoked.stdout
    r = requests.get(s.url + "/v1/catalogs", headers=auth, timeout=10)
    assert r.status_code == 401  # at once, on the running server
    states = {r["label"]: r["state"] for r in json.loads(_cli("token", "list", "--json", *args).stdout)}
    assert states["alice laptop"] == "revoked"
    missing = _cli("token", "revoke", "999", *args)
    assert missing.returncode == 2 and "token list" in missing.stderr


def test_cleanup_command_removes_old_orphans_only(sqlite_server: Server) -> None:
    s = sqlite_server
    cfg = s.state.config
    populate(s, "c", sample_coins("coins211", n_coins=1, per_coin=1))
    kept = [p for p in cfg.images_dir.rglob("*") if p.is_file()]
    old_orphan = cfg.images_dir / "ab" / ("ab" + "0" * 62 + ".img")
    new_orphan = cfg.images_dir / "cd" / ("cd" + "0" * 62 + ".img")
    stray_pack = cfg.packs_dir / "gone" / "v1-0000000000000000.pack"
    for p in (old_orphan, new_orphan, stray_pack):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(old_orphan, (two_hours_ago, two_hours_ago))
    os.utime(stray_pack, (two_hours_ago, two_hours_ago))
    out = _cli("cleanup", "--db", cfg.db_url, "--data-dir", str(cfg.data_dir))
    assert out.returncode == 0, out.stderr
    assert "removed 1 photo file(s) and 1 pack/delta file(s)" in out.stdout
    assert not old_orphan.exists() and not stray_pack.exists()
    assert new_orphan.exists() and all(p.exists() for p in kept)  # young files may belong to a running upload
