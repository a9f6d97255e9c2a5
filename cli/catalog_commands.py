"""``coinvision catalog import DIR --server URL``: upload a whole catalog folder to a sync server, then publish once.

Where embedding happens: on the server. The server is the authority on reference vectors (it embeds every photo
with the model it serves and records that model's fingerprint on each reference), so the import sends photos,
never vectors. Parallelism comes from sending ``--jobs`` photos at once, one photo per request: each request is
embedded by whichever server worker takes it, so a server run as ``gunicorn --workers N`` embeds N photos at a
time in N processes. One photo per request also makes failures per file: ``add_references`` is all or nothing
per request, so a bad photo never takes good ones down with it.

Resuming: a local journal (JSON lines) records, per photo, ``path`` + ``sha256`` -> the result (the server's
image id, or the error). A rerun skips every photo whose path and bytes the journal already has as imported
(and, unless ``--retry-failed``, as refused for good), so an interrupted import never uploads twice what was
done. The one gap a journal cannot close - a photo the server stored whose reply was lost when the import was
killed - is closed by asking the server which photos (by sha256) a coin already has before uploading to it.

Failures: a refused photo (not an image, too large, no embedding) is journaled and reported, the import goes
on. Transient failures (connection errors, timeouts, 429, 502/503/504, a 409 on a concurrent write) are retried
with exponential backoff and jitter, honouring ``Retry-After``.

Publishing: once, at the end, with an ``Idempotency-Key`` derived from what was imported, so a publish whose
reply was lost and is retried (or rerun) returns the same version instead of making another.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coinvision.sdk.errors import CoinVisionError, ConfigError
from coinvision.sdk.files import sha256_file

if TYPE_CHECKING:
    import requests

__all__ = ["CatalogImportError", "ImportOptions", "ImportReport", "Journal", "iter_journal", "register", "run_import"]

log = logging.getLogger(__name__)

# Statuses worth another try: the server is busy, restarting or behind a proxy that is.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
_METADATA = ("label", "country", "currency", "denomination", "side", "years")


class CatalogImportError(CoinVisionError):
    """The import cannot go on (server unreachable, token refused, catalog cannot be created)."""


@dataclass(frozen=True)
class ImportOptions:
    catalog_dir: Path
    server: str
    catalog_id: str
    token: str
    catalog_name: str | None = None
    jobs: int = 2  # photos in flight; match the server's worker processes
    journal: Path | None = None  # default: coinvision-import-<catalog>.jsonl in the current folder
    publish: bool = True
    retry_failed: bool = False
    retries: int = 5
    backoff_s: float = 0.5  # first retry after ~0.5 s, doubling, capped at 30 s
    timeout_s: float = 120.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"jobs={self.jobs}; use at least 1 (about one per server worker process)")
        if self.retries < 0:
            raise ConfigError(f"retries={self.retries}; use 0 or more")

    @property
    def journal_path(self) -> Path:
        return self.journal or Path(f"coinvision-import-{self.catalog_id}.jsonl")


@dataclass
class ImportReport:
    imported: int = 0  # uploaded and embedded in this run
    already: int = 0  # skipped: the journal or the server had them
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why), this run
    skipped_failed: int = 0  # refused in an earlier run with the same bytes, not retried
    no_coin: int = 0  # embedded, but the segmenter saw no coin (whole photo letterboxed)
    published_version: int | None = None
    publish_replayed: bool = False
    seconds: float = 0.0  # the whole import, publish included
    upload_seconds: float = 0.0  # the photos' uploads (embedding on the server) alone
    warnings: list[str] = field(default_factory=list)

    @property
    def photos_per_s(self) -> float:
        """Photos uploaded and embedded per second of the upload phase."""
        return self.imported / self.upload_seconds if self.upload_seconds > 0 else 0.0


# ------------------------------------------------------------------------------------------------ journal
class Journal:
    """Append-only JSON lines: ``{"path", "sha256", "coin_id", "status": imported|failed, ...}`` per photo and
    ``{"event": "published", ...}`` per publish. A line is flushed and fsynced before the next photo counts as
    done, so a killed import loses at most the photos in flight; a torn last line is ignored on reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[tuple[str, str], dict[str, Any]] = {}
        self.published_after = 0  # imported entries the last publish covered
        self.imported_total = 0
        self.target: dict[str, str] | None = None  # the server and catalog of the first run
        self._lock = threading.Lock()
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: skipping a torn line (the import was killed mid-write)", path)
                    continue
                self._note(entry)
        path.parent.mkdir(parents=True, exist_ok=True)

    def _note(self, entry: dict[str, Any]) -> None:
        if entry.get("event") == "start" and self.target is None:
            self.target = {"server": entry.get("server", ""), "catalog": entry.get("catalog", "")}
        elif entry.get("event") == "published":
            self.published_after = self.imported_total
        elif "path" in entry and "sha256" in entry:
            key = (entry["path"], entry["sha256"])
            if entry.get("status") == "imported" and self.done.get(key, {}).get("status") != "imported":
                self.imported_total += 1
            self.done[key] = entry

    def write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._note(entry)

    @property
    def unpublished(self) -> bool:
        return self.imported_total > self.published_after

    def imported_ids(self) -> list[int]:
        return sorted(int(e["image_id"]) for e in self.done.values() if e.get("status") == "imported")


# ------------------------------------------------------------------------------------------------ HTTP
class _Client:
    """``requests`` sessions (one per thread: a Session is not thread-safe) with retry and backoff."""

    def __init__(self, opts: ImportOptions, sleep: Callable[[float], None] = time.sleep) -> None:
        self.opts, self.sleep = opts, sleep
        self.base = opts.server.rstrip("/")
        self._local = threading.local()

    def _session(self) -> requests.Session:
        import requests

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers["Authorization"] = f"Bearer {self.opts.token}"
        return self._local.session

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        """The response of the first attempt that is not transient; raises :class:`CatalogImportError` when
        every attempt failed to connect."""
        import requests

        for attempt in range(self.opts.retries + 1):
            try:
                resp = self._session().request(method, self.base + path, timeout=self.opts.timeout_s, **kw)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self.opts.retries:
                    raise CatalogImportError(f"{method} {self.base + path}: {exc}; is the server running and "
                                             "--server right?") from exc
                self._wait(attempt, None, str(exc))
                continue
            retryable = resp.status_code in TRANSIENT_STATUSES or (resp.status_code == 409 and _code(resp) in (
                "coin_conflict",))
            if not retryable or attempt == self.opts.retries:
                return resp
            self._wait(attempt, resp.headers.get("Retry-After"), f"HTTP {resp.status_code}")
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def _wait(self, attempt: int, retry_after: str | None, why: str) -> None:
        delay = min(30.0, self.opts.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            with contextlib.suppress(ValueError):  # an HTTP date: the exponential delay will do
                delay = max(delay, float(retry_after))
        log.info("transient failure (%s); retrying in %.1f s", why, delay)
        self.sleep(delay)


def _error(resp: requests.Response) -> dict[str, Any]:
    """The server's error body ``{"code", "message", "detail"}`` (empty when the body is not one)."""
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _code(resp: requests.Response) -> str:
    return str(_error(resp).get("code") or "")


def _message(resp: requests.Response) -> str:
    err = _error(resp)
    if not err:
        return f"HTTP {resp.status_code}: {resp.text[:200]}".rstrip(": ")
    return f"HTTP {resp.status_code} {err.get('code', '')}: {err.get('message', '')}"


def _check(resp: requests.Response, what: str, ok: tuple[int, ...] = (200, 201)) -> dict[str, Any]:
    if resp.status_code in (401, 403):
        raise CatalogImportError(f"{what}: {_message(resp)}; pass a maintainer token (--token or "
                                 "$COINVISION_TOKEN; create one with coinvision token create --scope maintainer)")
    if resp.status_code not in ok:
        raise CatalogImportError(f"{what}: {_message(resp)}")
    return resp.json() if resp.content else {}


# ------------------------------------------------------------------------------------------------ import
@dataclass(frozen=True)
class _Photo:
    coin_id: str
    path: Path
    rel: str  # journal key: the path relative to the catalog folder
    sha256: str


def _coin_body(record: Any) -> dict[str, Any]:
    body: dict[str, Any] = {f: getattr(record, f) for f in _METADATA if getattr(record, f)}
    if record.extra:
        body["extra"] = dict(record.extra)
    return body


def run_import(opts: ImportOptions, *, sleep: Callable[[float], None] = time.sleep) -> ImportReport:
    """Import ``opts.catalog_dir`` into ``opts.catalog_id`` on ``opts.server`` and publish once (see the module)."""
    from coinvision.cli.pack_commands import scan_catalog
    from tqdm import tqdm

    started = time.perf_counter()
    report = ImportReport()
    coins, report.warnings = scan_catalog(opts.catalog_dir)
    root = Path(opts.catalog_dir).resolve()
    journal = Journal(opts.journal_path)
    target = {"server": opts.server.rstrip("/"), "catalog": opts.catalog_id}
    if journal.target is not None and journal.target != target:
        raise ConfigError(f"{journal.path} is the journal of an import into {journal.target['catalog']!r} on "
                          f"{journal.target['server']}, not {opts.catalog_id!r} on {target['server']}; pass another "
                          "--journal for this one")
    if journal.target is None:
        journal.write({"event": "start", **target, "at": time.time()})
    client = _Client(opts, sleep)

    _ensure_catalog(client, opts)
    photos = [_Photo(c.record.coin_id, p, p.resolve().relative_to(root).as_posix(), sha256_file(p))
              for c in coins for p in c.images]
    todo: list[_Photo] = []
    for photo in photos:
        entry = journal.done.get((photo.rel, photo.sha256))
        if entry is not None and entry["status"] == "imported":
            report.already += 1
        elif entry is not None and entry["status"] == "failed" and not entry.get("transient") \
                and not opts.retry_failed:
            report.skipped_failed += 1
        else:
            todo.append(photo)
    records = {c.record.coin_id: c.record for c in coins}
    need = sorted({p.coin_id for p in todo})

    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        # Coins first (metadata, and what the server already holds), then photos: a photo never races its coin.
        on_server = dict(zip(need, pool.map(lambda cid: _prepare_coin(client, opts, records[cid]), need),
                             strict=True))
        uploads: list[_Photo] = []
        for photo in todo:
            if photo.sha256 in on_server[photo.coin_id]:
                journal.write({"path": photo.rel, "sha256": photo.sha256, "coin_id": photo.coin_id,
                               "status": "imported", "image_id": on_server[photo.coin_id][photo.sha256],
                               "note": "already on the server"})
                report.already += 1
            else:
                uploads.append(photo)
        bar = tqdm(total=len(uploads), desc=f"importing into {opts.catalog_id}", unit="photo",
                   disable=not opts.progress)
        upload_started = time.perf_counter()
        futures = [pool.submit(_upload, client, opts, photo) for photo in uploads]
        for future in as_completed(futures):
            entry = future.result()
            journal.write(entry)
            if entry["status"] == "imported":
                report.imported += 1
                report.no_coin += not entry.get("coin_found", True)
            else:
                report.failed.append((entry["path"], entry["error"]))
            bar.update(1)
            bar.set_postfix(failed=len(report.failed))
        bar.close()
        report.upload_seconds = time.perf_counter() - upload_started

    if opts.publish and journal.unpublished:
        _publish(client, opts, journal, report)
    report.seconds = time.perf_counter() - started
    return report


def _ensure_catalog(client: _Client, opts: ImportOptions) -> None:
    resp = client.call("POST", "/v1/catalogs", json={"id": opts.catalog_id, "name": opts.catalog_name or
                                                      opts.catalog_id})
    if resp.status_code == 409:
        return  # it exists: importing adds to it
    _check(resp, f"create catalog {opts.catalog_id!r}", ok=(201,))


def _prepare_coin(client: _Client, opts: ImportOptions, record: Any) -> dict[str, int]:
    """Create or update the coin's metadata (classes.csv); returns sha256 -> image id of the photos it already
    has."""
    base = f"/v1/catalogs/{opts.catalog_id}/coins/{record.coin_id}"
    _check(client.call("PUT", base, json=_coin_body(record)), f"coin {record.coin_id!r}")
    detail = _check(client.call("GET", base), f"coin {record.coin_id!r}")
    return {i["sha256"]: int(i["id"]) for i in detail.get("images", []) if i.get("sha256")}


def _upload(client: _Client, opts: ImportOptions, photo: _Photo) -> dict[str, Any]:
    """One photo -> its journal entry (never raises for a refused or unreachable photo: the import goes on)."""
    entry: dict[str, Any] = {"path": photo.rel, "sha256": photo.sha256, "coin_id": photo.coin_id}
    kind = _CONTENT_TYPES.get(photo.path.suffix.lower(), "application/octet-stream")
    try:
        data = photo.path.read_bytes()
        resp = client.call("POST", f"/v1/catalogs/{opts.catalog_id}/coins/{photo.coin_id}/images",
                           files=[("image", (photo.path.name, data, kind))])
    except (OSError, CatalogImportError) as exc:
        return {**entry, "status": "failed", "transient": True, "error": str(exc)}
    if resp.status_code == 201:
        image = resp.json()["images"][0]
        return {**entry, "status": "imported", "image_id": image["id"], "coin_found": image["coin_found"],
                "model_fingerprint": image["model_fingerprint"]}
    # Statuses still transient after every retry are tried again by the next run; the rest are the photo's fault.
    return {**entry, "status": "failed", "transient": resp.status_code in TRANSIENT_STATUSES or resp.status_code in
            (401, 403), "error": _message(resp)}


def _publish(client: _Client, opts: ImportOptions, journal: Journal, report: ImportReport) -> None:
    # Same imported references -> same key: a retried publish whose reply was lost returns that version.
    digest = hashlib.sha256(json.dumps(journal.imported_ids()).encode()).hexdigest()[:40]
    resp = client.call("POST", f"/v1/catalogs/{opts.catalog_id}/publish",
                       headers={"Idempotency-Key": f"import-{digest}"})
    body = _check(resp, f"publish {opts.catalog_id!r}")
    report.published_version = int(body["version"])
    report.publish_replayed = bool(body.get("replayed"))
    journal.write({"event": "published", "version": report.published_version, "replayed": report.publish_replayed,
                   "at": time.time()})


# ------------------------------------------------------------------------------------------------ CLI
def register(sub: argparse._SubParsersAction) -> None:
    catalog = sub.add_parser("catalog", help="work with catalogs on a sync server")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", required=True)
    imp = catalog_sub.add_parser(
        "import", help="upload a catalog folder (<coin_id>/<image> or images/<class_id>/ + classes.csv) to a sync "
        "server in parallel, resumable, then publish once")
    imp.add_argument("catalog_dir", type=Path, help="the catalog folder (the layouts coinvision pack build reads)")
    imp.add_argument("--server", required=True, help="sync server base URL, e.g. https://coins.example.org")
    imp.add_argument("--catalog", dest="catalog_id", default=None,
                     help="catalog id on the server (default: the folder's name); created when missing")
    imp.add_argument("--name", default=None, help="name of a catalog the import creates")
    imp.add_argument("--token", default=None, help="maintainer token (default: $COINVISION_TOKEN)")
    imp.add_argument("--jobs", type=int, default=2,
                     help="photos uploaded at once (default 2); about the server's worker processes")
    imp.add_argument("--journal", type=Path, default=None,
                     help="resume journal (default: ./coinvision-import-<catalog>.jsonl)")
    imp.add_argument("--no-publish", dest="publish", action="store_false", help="upload only; publish later")
    imp.add_argument("--retry-failed", action="store_true", help="try again photos an earlier run refused")
    imp.add_argument("--retries", type=int, default=5, help="tries after a transient failure (default 5)")
    imp.add_argument("--no-progress", dest="progress", action="store_false")
    imp.set_defaults(func=_cmd_import)


def _cmd_import(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("COINVISION_TOKEN")
    if not token:
        raise ConfigError("no token; pass --token or set COINVISION_TOKEN to a maintainer token "
                          "(coinvision token create --scope maintainer)")
    catalog_id = args.catalog_id or Path(args.catalog_dir).resolve().name.lower().replace(" ", "-")
    opts = ImportOptions(catalog_dir=args.catalog_dir, server=args.server, catalog_id=catalog_id, token=token,
                         catalog_name=args.name, jobs=args.jobs, journal=args.journal, publish=args.publish,
                         retry_failed=args.retry_failed, retries=args.retries, progress=args.progress)
    print(f"journal: {opts.journal_path}", flush=True)
    report = run_import(opts)
    for warning in report.warnings:
        print(f"warning: {warning}")
    for path, why in report.failed:
        print(f"failed: {path}: {why}")
    print(f"imported {report.imported} photo(s) in {report.upload_seconds:.1f} s ({report.photos_per_s:.2f} "
          f"photos/s; {report.seconds:.1f} s in all); "
          f"{report.already} already imported, {len(report.failed)} failed"
          + (f", {report.skipped_failed} refused earlier (--retry-failed tries them again)"
             if report.skipped_failed else "")
          + (f"; no coin found in {report.no_coin}" if report.no_coin else ""))
    if report.published_version is not None:
        print(f"published {catalog_id} version {report.published_version}"
              + (" (the same import was published before)" if report.publish_replayed else ""))
    elif not args.publish:
        print("not published (--no-publish)")
    else:
        print("nothing new to publish")
    return 1 if report.failed else 0


def iter_journal(path: Path) -> Iterator[dict[str, Any]]:
    """The journal's entries (tests, tools)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue
