"""The server's file storage: where reference photos, packs and deltas live, how they are written and verified.

Everything the server keeps outside the database goes through a :class:`FileStore`. Two backends:

- :class:`LocalFileStore` (the default): the data dir's ``images/`` and ``packs/`` folders. One server (with any
  number of gunicorn workers) per data dir.
- :class:`S3FileStore` (``--storage s3://bucket/prefix``): an S3-compatible bucket that every replica shares, so
  a publish through one server is served by all of them.

Files are written once and never modified; names are content addressed (photos by their sha256, packs and deltas
by version and sha256 prefix). Readers never see a partial file: local files are written to a temporary name and
renamed (``coinvision.sdk.files.write_atomic``); an S3 PUT makes an object visible only once it is complete.

Before a pack or delta is served its bytes are checked against the signed version record's sha256
(:meth:`FileStore.pack_file`). Locally that happens once per file per process (memoised by inode, size and mtime:
files are immutable, so unchanged identity means unchanged bytes). From S3 the object is downloaded once into a
per-replica cache folder, hashed on the way, and served from there with ``sendfile`` and Range support like a
local file; a cached copy is verified again whenever its identity changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from coinvision.sdk.errors import ConfigError
from coinvision.sdk.files import sha256_file, write_atomic
from coinvision.sync_server.errors import GoneError, StoredDataError, UnavailableError

if TYPE_CHECKING:
    from coinvision.sync_server.config import ServerConfig

__all__ = [
    "FileStore",
    "LocalFileStore",
    "S3FileStore",
    "StorageUnavailableError",
    "StoredFile",
    "StoredFileCorruptError",
    "StoredFileMissingError",
    "open_store",
    "parse_s3_url",
]

log = logging.getLogger(__name__)

_verified: dict[tuple[str, int, int, int], str] = {}
_verified_lock = threading.Lock()
_MAX_VERIFIED = 4096
_CHUNK = 1 << 20
T = TypeVar("T")


class StorageUnavailableError(UnavailableError):
    """The file store cannot be reached or refuses the server (no bucket, no credentials, access denied)."""


class StoredFileMissingError(GoneError):
    """A file the database names is not in the store (removed past the retention, or by hand)."""


class StoredFileCorruptError(StoredDataError):
    """A stored file's bytes do not hash to the sha256 the server recorded for them."""


@dataclass(frozen=True)
class StoredFile:
    """A stored file as cleanup sees it: its name (a photo's sha256, a pack file's name), where it is, its age."""

    name: str
    location: str
    mtime: float


class FileStore(Protocol):
    """What the server needs from its file storage (photos, packs, deltas). Errors: the three kinds above."""

    def describe(self) -> str:
        """Where the files are, for logs and messages (a folder, or ``s3://bucket/prefix at endpoint``)."""
        ...

    def put_photo(self, sha256: str, data: bytes) -> None: ...

    def read_photo(self, sha256: str) -> bytes:
        """The photo's bytes, checked against its sha256 (its name)."""
        ...

    def remove_photo(self, sha256: str) -> bool:
        """Delete a photo; False when it was already gone."""
        ...

    def photos(self) -> Iterator[StoredFile]:
        """Every stored photo (``name`` is its sha256)."""
        ...

    def put_pack_file(self, catalog_id: str, name: str, data: bytes) -> None: ...

    def pack_file(self, catalog_id: str, name: str, size: int, sha256: str) -> Path:
        """A local file holding exactly the ``size`` bytes hashing to ``sha256`` that are stored as ``name``,
        ready to be served or parsed."""
        ...

    def pack_files(self, catalog_id: str) -> Iterator[StoredFile]:
        """Every file kept for ``catalog_id`` (packs, deltas and leftovers of interrupted publishes)."""
        ...

    def remove_pack_file(self, catalog_id: str, name: str) -> None: ...

    def catalogs_with_files(self) -> list[str]:
        """Catalog ids that have pack files (including catalogs deleted while a publish was running)."""
        ...

    def remove_catalog_files(self, catalog_id: str) -> None: ...

    def check_signing_key(self, public_key_b64: str) -> None:
        """Refuse to start (:class:`ConfigError`) when the store's packs were published under another key."""
        ...


def _hash_once(path: Path, st: os.stat_result) -> str:
    """The sha256 of an immutable file, memoised per file identity (path, inode, size, mtime)."""
    ident = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _verified_lock:
        known = _verified.get(ident)
    if known is None:
        known = sha256_file(path)
        with _verified_lock:
            if len(_verified) >= _MAX_VERIFIED:
                _verified.clear()
            _verified[ident] = known
    return known


def _verified_path(path: Path, size: int, sha256: str, where: str) -> Path:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise StoredFileMissingError("file_missing", f"{where} is not stored (any more)") from exc
    if st.st_size != size or _hash_once(path, st) != sha256:
        log.error("%s: %d bytes on disk do not hash to the recorded %d bytes / sha256 %s", where, st.st_size, size,
                  sha256)
        raise StoredFileCorruptError(
            "file_corrupt", f"{where} does not hold the bytes recorded for it (sha256 {sha256}); an operator must "
            "investigate, then publish again")
    return path


# ============================================================================================ local disk
class LocalFileStore:
    """Photos under ``images_dir/<sha[:2]>/<sha>.img``; each catalog's pack and delta files under
    ``packs_dir/<catalog_id>/<name>``."""

    def __init__(self, images_dir: Path, packs_dir: Path) -> None:
        self.images_dir = Path(images_dir)
        self.packs_dir = Path(packs_dir)

    def describe(self) -> str:
        return f"local disk ({self.images_dir}, {self.packs_dir})"

    # ------------------------------------------------------------------------------------ photos
    def photo_path(self, sha256: str) -> Path:
        """Where an uploaded reference photo is kept (content-addressed: one file per distinct photo)."""
        return self.images_dir / sha256[:2] / f"{sha256}.img"

    def put_photo(self, sha256: str, data: bytes) -> None:
        write_atomic(self.photo_path(sha256), data)

    def read_photo(self, sha256: str) -> bytes:
        path = self.photo_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise StoredFileMissingError("file_missing", f"photo {path} is not stored (any more)") from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            log.error("photo %s does not hash to its name", path)
            raise StoredFileCorruptError("file_corrupt", f"photo {path} does not hash to its name; an operator "
                                         "must investigate (upload the photo again)")
        return data

    def remove_photo(self, sha256: str) -> bool:
        try:
            self.photo_path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def photos(self) -> Iterator[StoredFile]:
        if not self.images_dir.is_dir():
            return
        for path in self.images_dir.glob("*/*"):
            if path.is_file():
                yield StoredFile(path.name.split(".")[0], str(path), path.stat().st_mtime)

    # ------------------------------------------------------------------------------------ packs and deltas
    def pack_path(self, catalog_id: str, name: str) -> Path:
        """Where a catalog's pack or delta file ``name`` is kept."""
        return self.packs_dir / catalog_id / name

    def put_pack_file(self, catalog_id: str, name: str, data: bytes) -> None:
        write_atomic(self.pack_path(catalog_id, name), data)

    def pack_file(self, catalog_id: str, name: str, size: int, sha256: str) -> Path:
        path = self.pack_path(catalog_id, name)
        return _verified_path(path, size, sha256, str(path))

    def pack_files(self, catalog_id: str) -> Iterator[StoredFile]:
        folder = self.packs_dir / catalog_id
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            if path.is_file():
                yield StoredFile(path.name, str(path), path.stat().st_mtime)

    def remove_pack_file(self, catalog_id: str, name: str) -> None:
        self.pack_path(catalog_id, name).unlink(missing_ok=True)

    def catalogs_with_files(self) -> list[str]:
        if not self.packs_dir.is_dir():
            return []
        return sorted(p.name for p in self.packs_dir.iterdir() if p.is_dir())

    def remove_catalog_files(self, catalog_id: str) -> None:
        shutil.rmtree(self.packs_dir / catalog_id, ignore_errors=True)

    def check_signing_key(self, public_key_b64: str) -> None:
        """Nothing to check: the key lives in the same data dir as the files."""


# ============================================================================================ S3
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9!_.*'()/-]*$")
_FIX_URL = ("give --storage s3://BUCKET or s3://BUCKET/PREFIX (a bucket name of 3-63 lowercase letters, digits, "
            "'.', '-')")
_KEY_FILE = "signing-key.pub"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, "some/prefix/"); :class:`ConfigError` naming the value and the fix."""
    if not url.startswith("s3://"):
        raise ConfigError(f"storage {url!r} is not an s3:// URL; {_FIX_URL}, or leave it unset for the local disk")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(f"storage {url!r}: {bucket!r} is not a valid bucket name; {_FIX_URL}")
    prefix = prefix.strip("/")
    if not _PREFIX.match(prefix) or any(part in ("", ".", "..") for part in prefix.split("/") if prefix):
        raise ConfigError(f"storage {url!r}: prefix {prefix!r} must be '/'-separated names of letters, digits and "
                          "!_.*'()- (no empty, '.' or '..' parts)")
    return bucket, (prefix + "/" if prefix else "")


class S3FileStore:
    """Photos under ``<prefix>images/<sha[:2]>/<sha>.img``, packs and deltas under ``<prefix>packs/<catalog>/<name>``
    in one bucket; verified pack/delta copies in ``cache_dir`` (this replica's, at most ``cache_bytes``).

    ``client`` is a boto3 S3 client (thread-safe; one per process). Credentials come from boto3's usual chain
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role)."""

    def __init__(self, client: Any, bucket: str, prefix: str, cache_dir: Path, *, cache_bytes: int,
                 endpoint_url: str | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self._s3, self.bucket, self.prefix = client, bucket, prefix
        self.cache_dir, self.cache_bytes, self.endpoint_url = Path(cache_dir), cache_bytes, endpoint_url
        self._client_error, self._boto_error = ClientError, BotoCoreError
        self._evict_lock = threading.Lock()

    @classmethod
    def connect(cls, url: str, cache_dir: Path, *, endpoint_url: str | None = None,
                cache_bytes: int = 2 << 30) -> S3FileStore:
        """A store on ``s3://bucket/prefix`` whose bucket exists and answers (:class:`ConfigError` otherwise)."""
        bucket, prefix = parse_s3_url(url)
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise ConfigError(f"storage {url!r} needs boto3: pip install 'coinvision[server]'") from exc
        config = Config(
            retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=60,
            max_pool_connections=32,
            # S3-compatible servers on an address or a private name (MinIO, Ceph, moto) answer path-style
            # requests; AWS itself keeps its default (virtual-hosted buckets).
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        client = boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)
        store = cls(client, bucket, prefix, cache_dir, cache_bytes=cache_bytes, endpoint_url=endpoint_url)
        try:
            store._call("reach the bucket", "", lambda: client.head_bucket(Bucket=bucket))
        except StoredFileMissingError as exc:
            raise ConfigError(f"bucket {bucket!r} does not exist at {store._where()}: create it (e.g. "
                              f"`aws s3 mb s3://{bucket}`) or fix --storage / COINVISION_STORAGE") from exc
        except StorageUnavailableError as exc:
            raise ConfigError(str(exc)) from exc
        log.info("file storage: %s", store.describe())
        return store

    def _where(self) -> str:
        return f"S3 endpoint {self.endpoint_url}" if self.endpoint_url else "AWS S3"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self._where()} (cache {self.cache_dir})"

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Run one S3 request; its failures become this module's errors, naming the bucket/key and the fix."""
        try:
            return fn()
        except self._client_error as exc:
            err = getattr(exc, "response", {}).get("Error", {})
            code = str(err.get("Code", ""))
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket"):
                raise StoredFileMissingError("file_missing", f"{self._url(key)} is not stored (any more)") from exc
            if code == "NoSuchBucket":
                fix = f"create the bucket or fix --storage / COINVISION_STORAGE (now s3://{self.bucket}/{self.prefix})"
            elif code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
                fix = ("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and that they may get, put, delete and list "
                       f"objects in bucket {self.bucket!r}")
            else:
                fix = f"check the S3 service at {self._where()}"
            log.error("S3 %s %s failed: %s %s", what, self._url(key), code, err.get("Message", ""))
            raise StorageUnavailableError(
                "storage_unavailable", f"cannot {what} {self._url(key)} ({code or status}: "
                f"{err.get('Message', exc)}); {fix}") from exc
        except self._boto_error as exc:  # no endpoint, no credentials, timeouts after the retries
            log.error("S3 %s %s failed: %s", what, self._url(key), exc)
            raise StorageUnavailableError(
                "storage_unavailable", f"cannot {what} {self._url(key)} ({exc}); check that {self._where()} "
                "answers (COINVISION_S3_ENDPOINT_URL) and that AWS credentials are set (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE)") from exc

    def _put(self, key: str, data: bytes) -> None:
        sha = hashlib.sha256(data).hexdigest()
        # The server's sha256 travels as metadata: an operator can check an object without the database.
        self._call("write", key, lambda: self._s3.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType="application/octet-stream",
            Metadata={"sha256": sha}))

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        def listing() -> list[dict[str, Any]]:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [obj for page in pages for obj in page.get("Contents", [])]

        return self._call("list", prefix, listing)

    # ------------------------------------------------------------------------------------ photos
    def _photo_key(self, sha256: str) -> str:
        return f"{self.prefix}images/{sha256[:2]}/{sha256}.img"

    def put_photo(self, sha256: str, data: bytes) -> None:
        self._put(self._photo_key(sha256), data)

    def read_photo(self, sha256: str) -> bytes:
        key = self._photo_key(sha256)
        data: bytes = self._call("read", key, lambda: self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        if hashlib.sha256(data).hexdigest() != sha256:
            log.error("photo %s does not hash to its name", self._url(key))
            raise StoredFileCorruptError("file_corrupt", f"photo {self._url(key)} does not hash to its name; an "
                                         "operator must investigate (upload the photo again)")
        return data

    def remove_photo(self, sha256: str) -> bool:
        key = self._photo_key(sha256)
        try:
            self._call("look up", key, lambda: self._s3.head_object(Bucket=self.bucket, Key=key))
        except StoredFileMissingError:
            return False
        self._call("delete", key, lambda: self._s3.delete_object(Bucket=self.bucket, Key=key))
        return True

    def photos(self) -> Iterator[StoredFile]:
        for obj in self._list(f"{self.prefix}images/"):
            name = obj["Key"].rsplit("/", 1)[-1].split(".")[0]
            yield StoredFile(name, self._url(obj["Key"]), obj["LastModified"].timestamp())

    # ------------------------------------------------------------------------------------ packs and deltas
    def _pack_key(self, catalog_id: str, name: str) -> str:
        return f"{self.prefix}packs/{catalog_id}/{name}"

    def _cache_path(self, catalog_id: str, name: str) -> Path:
        return self.cache_dir / catalog_id / name

    def put_pack_file(self, catalog_id: str, name: str, data: bytes) -> None:
        self._put(self._pack_key(catalog_id, name), data)

    def pack_file(self, catalog_id: str, name: str, size: int, sha256: str) -> Path:
        cached = self._cache_path(catalog_id, name)
        try:
            path = _verified_path(cached, size, sha256, str(cached))
        except StoredFileMissingError:
            pass
        except StoredFileCorruptError:
            cached.unlink(missing_ok=True)  # a damaged cache copy: fetch the object again
        else:
            os.utime(path)  # most recently used: the eviction keeps it
            return path
        self._download(self._pack_key(catalog_id, name), cached, size, sha256)
        self._evict(keep=cached)
        return cached

    def _download(self, key: str, dest: Path, size: int, sha256: str) -> None:
        """Stream the object into a temporary file beside ``dest``, hashing it; rename it into place only when
        its size and sha256 are the recorded ones (a concurrent download of the same file renames the same bytes)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)

        def fetch() -> tuple[int, str]:
            digest, got = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as f:
                for chunk in self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].iter_chunks(_CHUNK):
                    digest.update(chunk)
                    got += len(chunk)
                    f.write(chunk)
            return got, digest.hexdigest()

        try:
            got, sha = self._call("read", key, fetch)
            if got != size or sha != sha256:
                log.error("%s: %d bytes hashing to %s, the record says %d bytes / %s", self._url(key), got, sha,
                          size, sha256)
                raise StoredFileCorruptError(
                    "file_corrupt", f"{self._url(key)} does not hold the bytes recorded for it (sha256 {sha256}); "
                    "an operator must investigate the bucket, then publish again")
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _evict(self, keep: Path) -> None:
        """Keep the cache under ``cache_bytes``: least recently served copies go first (never ``keep``)."""
        with self._evict_lock:
            files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.cache_dir.glob("*/*")
                     if p.is_file() and not p.name.startswith(".")]
            total = sum(size for _, size, _ in files)
            for _, size, path in sorted(files):
                if total <= self.cache_bytes:
                    break
                if path != keep:
                    path.unlink(missing_ok=True)
                    total -= size

    def pack_files(self, catalog_id: str) -> Iterator[StoredFile]:
        for obj in self._list(f"{self.prefix}packs/{catalog_id}/"):
            yield StoredFile(obj["Key"].rsplit("/", 1)[-1], self._url(obj["Key"]), obj["LastModified"].timestamp())

    def remove_pack_file(self, catalog_id: str, name: str) -> None:
        key = self._pack_key(catalog_id, name)
        self._call("delete", key, lambda: self._s3.delete_object(Bucket=self.bucket, Key=key))
        self._cache_path(catalog_id, name).unlink(missing_ok=True)

    def catalogs_with_files(self) -> list[str]:
        prefix = f"{self.prefix}packs/"
        pages = self._call("list", prefix, lambda: list(self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/")))
        return sorted(p["Prefix"][len(prefix):].rstrip("/") for page in pages for p in page.get("CommonPrefixes", []))

    def remove_catalog_files(self, catalog_id: str) -> None:
        keys = [obj["Key"] for obj in self._list(f"{self.prefix}packs/{catalog_id}/")]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = {"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}
            self._call("delete", keys[i], lambda b=batch: self._s3.delete_objects(Bucket=self.bucket, Delete=b))
        shutil.rmtree(self.cache_dir / catalog_id, ignore_errors=True)

    def check_signing_key(self, public_key_b64: str) -> None:
        """The first server on a bucket records its public key there; every later one must have the same key.
        Replicas with different keys would sign versions the others refuse to serve (and devices refuse)."""
        key = f"{self.prefix}{_KEY_FILE}"
        try:
            stored = self._call("read", key, lambda: self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except StoredFileMissingError:
            self._put(key, public_key_b64.encode())
            log.info("recorded this server's signing public key in %s", self._url(key))
            return
        if stored.decode(errors="replace").strip() != public_key_b64:
            raise ConfigError(
                f"{self._url(key)} says the catalogs in this bucket are signed by public key "
                f"{stored.decode(errors='replace').strip()}, but this server's key is {public_key_b64}: give every "
                "replica the same key file (COINVISION_SIGNING_KEY), or use another bucket/prefix")


def open_store(cfg: ServerConfig) -> FileStore:
    """The store ``cfg`` names: the data dir's folders, or the S3 bucket of ``cfg.storage``."""
    if not cfg.storage:
        return LocalFileStore(cfg.images_dir, cfg.packs_dir)
    return S3FileStore.connect(cfg.storage, cfg.data_dir / "cache" / "packs", endpoint_url=cfg.s3_endpoint_url,
                               cache_bytes=cfg.storage_cache_bytes)
