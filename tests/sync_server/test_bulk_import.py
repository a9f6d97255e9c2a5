"""``coinvision catalog import``: the sample catalog into a real loopback server, a corrupt photo reported while the
others go in, an import killed mid-way that resumes without uploading again what was done, one publish at the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from coinvision.cli.catalog_commands import ImportOptions, iter_journal, run_import
from coinvision.cli.main import main
from coinvision.cli.pack_commands import scan_catalog

from tests.sync_server.helpers import SAMPLE, Server

# The import goes coin by coin in id order, each coin's photos in name order: the corrupt 'photo' is the very last
# upload, so an import killed before its last good photo has not reached it yet (whatever the machine's speed).
CORRUPT_COIN = "5c"
CORRUPT = f"images/{CORRUPT_COIN}/zz_corrupt.jpg"


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    """The bundled euro_phone catalog (images/<class_id>/ + classes.csv) plus one corrupt 'photo'."""
    root = tmp_path / "euro_phone"
    shutil.copytree(SAMPLE / "euro_phone", root)
    assert max(c.record.coin_id for c in scan_catalog(root)[0]) == CORRUPT_COIN
    (root / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG at all")
    return root


def _photos(catalog: Path) -> int:
    return sum(len(c.images) for c in scan_catalog(catalog)[0])


def _references(server: Server, catalog_id: str) -> dict[str, int]:
    coins = server.get(f"/v1/catalogs/{catalog_id}/coins").json()["coins"]
    return {c["coin_id"]: c["image_count"] for c in coins}


def _journal_statuses(path: Path) -> list[str]:
    return [e["status"] for e in iter_journal(path) if "status" in e]


def test_import_reports_the_corrupt_photo_imports_the_rest_and_publishes_once(
        sqlite_server: Server, catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "journal.jsonl"
    argv = ["catalog", "import", str(catalog_dir), "--server", sqlite_server.url, "--catalog", "euro",
            "--token", sqlite_server.local.maintainer_token, "--jobs", "2", "--journal", str(journal), "--no-progress"]
    assert main(argv) == 1  # a failed photo makes the exit status non-zero; the rest went in
    out = capsys.readouterr().out
    assert f"failed: {CORRUPT}: HTTP 415 unsupported_image_format" in out
    total = _photos(catalog_dir)
    refs = _references(sqlite_server, "euro")
    assert sum(refs.values()) == total - 1
    assert refs[CORRUPT_COIN] == len(list((catalog_dir / "images" / CORRUPT_COIN).iterdir())) - 1
    coin = sqlite_server.get("/v1/catalogs/euro/coins/1c").json()
    assert (coin["label"], coin["currency"]) == ("1 Cent", "Euro")  # classes.csv metadata went with the coins
    versions = sqlite_server.get("/v1/catalogs/euro/versions").json()["versions"]
    assert len(versions) == 1 and versions[0]["vector_count"] == total - 1
    assert "published euro version 1" in out

    # A rerun uploads nothing, does not retry the refused photo (same bytes) and publishes nothing new.
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "imported 0 photo(s)" in out and f"{total - 1} already imported" in out and "refused earlier" in out
    assert "nothing new to publish" in out
    assert len(sqlite_server.get("/v1/catalogs/euro/versions").json()["versions"]) == 1
    assert sum(_references(sqlite_server, "euro").values()) == total - 1

    # The journal belongs to this catalog on this server: another target is refused, naming the fix.
    assert main([*argv[:6], "other", *argv[7:]]) == 2
    assert "pass another --journal" in capsys.readouterr().err


def test_interrupted_import_resumes_without_uploading_again(sqlite_server: Server, catalog_dir: Path,
                                                            tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    cmd = [sys.executable, "-m", "coinvision.cli.main", "catalog", "import", str(catalog_dir), "--server",
           sqlite_server.url, "--catalog", "euro", "--jobs", "1", "--journal", str(journal), "--no-progress"]
    env = {**os.environ, "COINVISION_TOKEN": sqlite_server.local.maintainer_token}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while (not journal.is_file() or _journal_statuses(journal).count("imported") < 5) and proc.poll() is None:
        assert time.monotonic() < deadline, "the import never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the hardest stop: no handler runs, a journal line may be torn
    proc.wait(timeout=30)
    done = _journal_statuses(journal).count("imported")
    total = _photos(catalog_dir)
    assert 5 <= done < total - 1, "the import finished before it could be interrupted; kill it sooner"
    assert sqlite_server.get("/v1/catalogs/euro/versions").json()["versions"] == []  # never published half

    on_server_before = sum(_references(sqlite_server, "euro").values())
    report = run_import(ImportOptions(catalog_dir=catalog_dir, server=sqlite_server.url, catalog_id="euro",
                                      token=sqlite_server.local.maintainer_token, jobs=2, journal=journal,
                                      progress=False))
    # what the journal had is skipped, what the server had (a reply lost to the kill) is recognised, the rest uploaded;
    # an upload still in the server's hands at the kill may land after on_server_before was read: recognised too
    assert report.already >= max(done, on_server_before)
    assert report.imported + report.already == total - 1
    assert [p for p, _ in report.failed] == [CORRUPT]
    refs = _references(sqlite_server, "euro")
    assert sum(refs.values()) == total - 1  # every good photo exactly once
    assert report.published_version == 1
    entries = [e for e in iter_journal(journal) if e.get("status") == "imported"]
    assert len({e["image_id"] for e in entries}) == total - 1
    assert [e["version"] for e in iter_journal(journal) if e.get("event") == "published"] == [1]
    assert json.loads(journal.read_text().splitlines()[-1])["event"] == "published"


def test_transient_errors_are_retried_with_backoff(sqlite_server: Server, catalog_dir: Path, tmp_path: Path) -> None:
    """A server that answers 503 twice per photo (a proxy in front of a restarting worker) still gets every photo."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Lock, Thread

    import requests

    upstream, seen, lock = sqlite_server.url, {}, Lock()

    class Flaky(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _forward(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                seen[self.path] = seen.get(self.path, 0) + 1
                refuse = self.path.endswith("/images") and seen[self.path] % 3 != 0
            if refuse:
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() in
                       ("authorization", "content-type", "idempotency-key")}
            up = requests.request(method, upstream + self.path, headers=headers, data=body, timeout=60)
            self.send_response(up.status_code)
            self.send_header("Content-Type", up.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(up.content)))
            self.end_headers()
            self.wfile.write(up.content)

        def do_GET(self) -> None:
            self._forward("GET")

        def do_POST(self) -> None:
            self._forward("POST")

        def do_PUT(self) -> None:
            self._forward("PUT")

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    Thread(target=proxy.serve_forever, daemon=True).start()
    sleeps: list[float] = []
    try:
        report = run_import(ImportOptions(
            catalog_dir=catalog_dir, server=f"http://127.0.0.1:{proxy.server_port}", catalog_id="euro",
            token=sqlite_server.local.maintainer_token, jobs=2, journal=tmp_path / "j.jsonl", progress=False,
            backoff_s=0.01), sleep=sleeps.append)
    finally:
        proxy.shutdown()
    assert report.imported == _photos(catalog_dir) - 1 and len(report.failed) == 1
    assert len(sleeps) >= 2 * report.imported  # two backoffs per photo
    assert report.published_version == 1


def test_bench_import_quick_runs_against_gunicorn(tmp_path: Path, tiny_models_dir: Path) -> None:
    from benchmarks import bench_import

    out = tmp_path / "import.json"
    assert bench_import.main(["--quick", "--workers", "1", "--models", str(tiny_models_dir), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["table"]
    imported = next(r for r in rows if r["mode"] == "catalog import")
    assert imported["photos"] == _photos(SAMPLE / "euro_phone") and imported["photos_per_s"] > 0
    assert next(r for r in rows if r["mode"] == "embed only (no server)")["embed_only_photos_per_s"] > 0
