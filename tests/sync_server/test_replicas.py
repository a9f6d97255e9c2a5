"""Two ``coinvision serve`` replicas on one PostgreSQL database and one S3 bucket (docs/DEPLOYMENT.md, "Replicas").

Both start at once on an empty schema (the migration lock keeps them from racing), share one signing key file, and
act as one server: a catalog built and published through replica A syncs to a device from replica B with its
signed manifest and pack verified; B publishes the next version with a delta built from A's pack in the bucket;
photos uploaded through A are in the bucket for B (and any process) to read and remove.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from coinvision.sdk import pack as packlib
from coinvision.sdk.sync_client import SyncClient
from coinvision.sync_server.signing import load_or_create_key, public_key_b64
from coinvision.sync_server.storage import S3FileStore

from tests.sync_server.conftest import Bucket
from tests.sync_server.helpers import sample_coins
from tests.sync_server.test_cli import _cli, _free_port, _wait_healthy

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen[str]
    maintainer: dict[str, str]
    device_token: str

    def call(self, method: str, path: str, who: str = "maintainer", **kw: object) -> requests.Response:
        headers = self.maintainer if who == "maintainer" else {"Authorization": f"Bearer {self.device_token}"}
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kw)  # type: ignore[arg-type]


@pytest.fixture
def replicas(pg_url: str, s3_bucket: Bucket, tmp_path: Path, tiny_models_dir: Path) -> Iterator[list[Replica]]:
    key_path = tmp_path / "shared" / "signing_key.pem"
    key_path.parent.mkdir(mode=0o700)
    load_or_create_key(key_path)  # made once, handed to every replica (a secret store in production)
    env = {**os.environ, **s3_bucket.env, "COINVISION_SIGNING_KEY": str(key_path),
           "COINVISION_STORAGE": s3_bucket.storage}
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    for i in range(2):  # started together on an empty schema: both migrate, under the migration lock
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "coinvision.cli.main", "serve", "--port", str(port), "--db", pg_url,
             "--data-dir", str(tmp_path / f"replica{i}"), "--models", str(tiny_models_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        procs.append((f"http://127.0.0.1:{port}", proc))
    try:
        for url, proc in procs:
            _wait_healthy(url, proc)
        # tokens live in the shared database: made once (from any machine with its URL), valid on every replica
        maintainer = _cli("token", "create", "--scope", "maintainer", "--db", pg_url, "--data-dir",
                          str(tmp_path / "admin"), env={"COINVISION_SIGNING_KEY": str(key_path)})
        device = _cli("token", "create", "--scope", "device", "--db", pg_url, "--data-dir", str(tmp_path / "admin"),
                      env={"COINVISION_SIGNING_KEY": str(key_path)})
        assert maintainer.returncode == 0 and device.returncode == 0, maintainer.stderr + device.stderr
        auth = {"Authorization": f"Bearer {maintainer.stdout.strip()}"}
        yield [Replica(url, proc, auth, device.stdout.strip()) for url, proc in procs]
    finally:
        outputs = []
        for _, proc in procs:
            proc.send_signal(signal.SIGTERM)
            outputs.append(proc.communicate(timeout=30)[0])
    for out in outputs:
        assert "Traceback" not in out, out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _upload(replica: Replica, catalog: str, coins: list[tuple[str, str, list[Path]]]) -> None:
    for coin_id, label, images in coins:
        r = replica.call("PUT", f"/v1/catalogs/{catalog}/coins/{coin_id}", json={"label": label})
        assert r.status_code in (200, 201), r.text
        files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in images]
        r = replica.call("POST", f"/v1/catalogs/{catalog}/coins/{coin_id}/images", files=files)
        assert r.status_code == 201, r.text


def test_publish_through_one_replica_sync_a_device_from_the_other(
    replicas: list[Replica], s3_bucket: Bucket, tmp_path: Path
) -> None:
    a, b = replicas
    public_key = public_key_b64(load_or_create_key(tmp_path / "shared" / "signing_key.pem"))
    coins = sample_coins("coins211", n_coins=3, per_coin=2)
    assert a.call("POST", "/v1/catalogs", json={"id": "euro", "name": "Euro"}).status_code == 201
    _upload(a, "euro", coins[:2])

    # photos uploaded through A are in the bucket, whole and readable by anyone who has it
    reader = S3FileStore.connect(s3_bucket.storage, tmp_path / "reader", endpoint_url=s3_bucket.endpoint)
    for _, _, images in coins[:2]:
        for p in images:
            assert reader.read_photo(hashlib.sha256(p.read_bytes()).hexdigest()) == p.read_bytes()

    v1 = a.call("POST", "/v1/catalogs/euro/publish")
    assert v1.status_code == 201, v1.text
    v1 = v1.json()
    # B names the same version in a manifest signed with the shared key
    client = SyncClient(b.url, "euro", tmp_path / "device", public_key, token=b.device_token)
    payload = client.verify_manifest(b.call("GET", "/v1/catalogs/euro/manifest", who="device").json())
    assert (payload["version"], payload["pack"]["sha256"]) == (1, v1["pack"]["sha256"])

    # a device syncs from B: manifest signature, pack sha256 and fingerprint checked by the SDK
    first = client.sync()
    assert (first.version, first.via) == (1, "full") and _sha(client.pack_path) == v1["pack"]["sha256"]
    assert sorted(set(client.load_pack().coin_ids)) == sorted(c for c, _, _ in coins[:2])

    # B adds a coin and publishes v2: its delta is built from A's v1 pack, read from the bucket
    _upload(b, "euro", coins[2:])
    v2 = b.call("POST", "/v1/catalogs/euro/publish").json()
    assert v2["version"] == 2 and v2["delta"] is not None
    # the device, now on A, gets it as a delta; the result is B's published pack byte for byte
    client_a = SyncClient(a.url, "euro", tmp_path / "device", public_key, token=a.device_token)
    second = client_a.sync()
    assert (second.version, second.via) == (2, "delta") and _sha(client.pack_path) == v2["pack"]["sha256"]
    assert packlib.read_pack(client.pack_path).catalog_version == 2

    # a reference uploaded through A, deleted through B: B finds and removes its photo in the bucket
    detail = a.call("GET", f"/v1/catalogs/euro/coins/{coins[0][0]}").json()
    image = detail["images"][0]
    assert b.call("DELETE", f"/v1/images/{image['id']}").status_code == 200
    assert image["sha256"] not in {f.name for f in reader.photos()}
