"""The documented deployment (docs/DEPLOYMENT.md): gunicorn behind nginx with docs/deploy/nginx-coinvision.conf.

Reproduces the probe's slow-body attack: clients that announce a large body and stall take every gunicorn thread
(health checks time out) when they reach gunicorn directly, and take none through nginx, which buffers bodies.
Runs when an ``nginx`` binary is installed (``apt-get install nginx-light``); skipped otherwise.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from coinvision.sync_server.auth import create_token
from coinvision.sync_server.db import make_engine, make_sessionmaker, upgrade_database
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "docs" / "deploy" / "nginx-coinvision.conf"


def _nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _wait(url: str, proc: subprocess.Popen, verify: str | bool = True, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(url + "/v1/health", timeout=5, verify=verify).ok:
                return
        except requests.RequestException:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
        time.sleep(0.3)


def _stall(host: str, port: int, path: str, token: str, tls: ssl.SSLContext | None = None) -> socket.socket:
    """Start an upload that announces 30 MB, send 1 kB of it, and stop sending (the socket stays open)."""
    sock = socket.create_connection((host, port), timeout=10)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=host)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 30000000\r\n\r\n")
    sock.sendall(head.encode() + b"--xyz\r\n" + b"a" * 1024)
    return sock


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """gunicorn as documented but small (1 worker, 2 threads), with a catalog and coin to upload to."""
    data = tmp_path / "data"
    db_url = f"sqlite:///{data / 'cv.db'}"
    engine = make_engine(db_url)
    upgrade_database(engine)
    with make_sessionmaker(engine)() as session:
        token = create_token(session, "maintainer", "test")
    engine.dispose()
    port = _free_port()
    env = {**os.environ, "COINVISION_DATA_DIR": str(data), "COINVISION_DB_URL": db_url,
           "COINVISION_TRUSTED_PROXIES": "1"}
    env.pop("COINVISION_MODELS_DIR", None)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "--workers", "1", "--worker-class", "gthread",
         "--threads", "2", "--timeout", "120", "--bind", f"127.0.0.1:{port}",
         "coinvision.sync_server.app:create_app()"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc)
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.post(url + "/v1/catalogs", json={"id": "c"}, headers=auth, timeout=10).status_code == 201
        assert requests.put(url + "/v1/catalogs/c/coins/x", json={}, headers=auth, timeout=10).status_code == 201
        yield url, token
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def nginx(gunicorn: tuple[str, str], tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    exe = _nginx()
    if exe is None:
        pytest.skip("no nginx binary (apt-get install nginx-light) to test docs/deploy/nginx-coinvision.conf")
    upstream, token = gunicorn
    folder = tmp_path / "nginx"
    folder.mkdir()
    cert, key = _self_signed(folder)
    port = _free_port()
    # The shipped file, with only the addresses and certificate paths of this machine.
    site = NGINX_CONF.read_text()
    for old, new in {"127.0.0.1:8000": upstream.removeprefix("http://"), "listen 443 ssl;": f"listen {port} ssl;",
                     "/etc/letsencrypt/live/coins.example.org/fullchain.pem": str(cert),
                     "/etc/letsencrypt/live/coins.example.org/privkey.pem": str(key)}.items():
        assert old in site, old
        site = site.replace(old, new)
    (folder / "site.conf").write_text(site)
    (folder / "nginx.conf").write_text(
        f"pid {folder}/nginx.pid;\nerror_log {folder}/error.log;\ndaemon off;\nevents {{}}\n"
        f"http {{ access_log off; client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy;\n"
        f"  include {folder}/site.conf; }}\n"
    )
    proc = subprocess.Popen([exe, "-c", str(folder / "nginx.conf"), "-p", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"https://127.0.0.1:{port}"
    try:
        _wait(url, proc, verify=str(cert))
        yield url, token, cert
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.timeout(300)
def test_stalled_uploads_take_gunicorn_down_but_not_through_nginx(nginx: tuple[str, str, Path],
                                                                  gunicorn: tuple[str, str]) -> None:
    url, token, cert = nginx
    direct, _ = gunicorn
    path = "/v1/catalogs/c/coins/x/images"
    host, port = direct.removeprefix("http://").split(":")

    # 1. the attack against gunicorn alone: 4 stalled uploads hold its 2 threads; health checks time out
    stalled = [_stall(host, int(port), path, token) for _ in range(4)]
    time.sleep(1.0)
    with pytest.raises(requests.Timeout):
        requests.get(direct + "/v1/health", timeout=3)
    for s in stalled:
        s.close()
    deadline = time.monotonic() + 30
    while True:  # the threads are freed once the clients go away
        try:
            if requests.get(direct + "/v1/health", timeout=3).ok:
                break
        except requests.RequestException:
            assert time.monotonic() < deadline, "gunicorn did not recover after the stalled clients left"

    # 2. the same attack, 12 clients, through nginx: gunicorn never sees the stalled requests
    tls = ssl.create_default_context(cafile=str(cert))
    nhost, nport = url.removeprefix("https://").split(":")
    stalled = [_stall(nhost, int(nport), path, token, tls) for _ in range(12)]
    try:
        time.sleep(1.0)
        for _ in range(5):
            r = requests.get(url + "/v1/health", timeout=3, verify=str(cert))
            assert r.status_code == 200
        assert r.headers["Server"] == "nginx"  # server_tokens off: no version
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        assert requests.get(direct + "/v1/health", timeout=3).ok
    finally:
        for s in stalled:
            s.close()


def test_nginx_limits_photo_search_and_forwards_the_client_address(nginx: tuple[str, str, Path]) -> None:
    url, token, cert = nginx
    auth = {"Authorization": f"Bearer {token}"}
    codes = [requests.post(url + "/v1/catalogs/c/search", json={"embedding": [1.0, 0.0]}, headers=auth,
                           timeout=10, verify=str(cert)).status_code for _ in range(16)]
    assert 429 in codes and codes[0] != 429  # burst 10 at 2/s: the tail of 16 quick requests is refused
    r = requests.post(url + "/v1/catalogs/c/coins/x/images", data=b"x" * (34 * 1024 * 1024), headers={
        **auth, "Content-Type": "multipart/form-data; boundary=xyz"}, timeout=30, verify=str(cert))
    assert r.status_code == 413  # nginx refuses bodies over client_max_body_size before reading them
