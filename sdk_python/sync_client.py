"""Device-side catalog sync: fetch the signed manifest, download the pack (or a delta), verify, cache atomically.

What is checked before a pack replaces the cached one: the manifest's Ed25519 signature (the device ships the
server's public key), its expiry, that it is for this catalog, that its version is not older than the cached
one (no rollback), that the model fingerprint is the one this device's embedder has, the sha256 of every
downloaded file, and that the pack parses and says what the manifest says. Any failure raises
:class:`SyncError` and leaves the cache as it was, so the device keeps recognizing offline with the last good
pack. Interrupted downloads resume with an HTTP Range request. The cached pack itself is re-hashed on every
``sync()`` and ``load_pack()``: a pack corrupted on the device's storage is downloaded again at the next sync
(``via="repair"``) instead of being reported as current.

Cache layout (``cache_dir/<catalog_id>/``): ``current.pack``, ``state.json``, ``downloads/<sha256>.part``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coinvision.sdk import pack as packlib
from coinvision.sdk.errors import PackError, SyncError
from coinvision.sdk.files import write_atomic
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["SyncClient", "SyncResult", "canonical_json", "load_public_key"]

log = logging.getLogger(__name__)
_CHUNK = 256 * 1024


def load_public_key(key: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    """Accept the key as an object, 32 raw bytes, base64 text (``coinvision keys public``) or PEM."""
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        if isinstance(key, str):
            text = key.strip()
            if text.startswith("-----BEGIN"):
                loaded = serialization.load_pem_public_key(text.encode("ascii"))
                if not isinstance(loaded, Ed25519PublicKey):
                    raise SyncError("public key PEM is not an Ed25519 key")
                return loaded
            key = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(bytes(key))
    except (ValueError, binascii.Error) as exc:
        raise SyncError(f"server public key is not valid ({exc}); use the output of `coinvision keys public`") from exc


def canonical_json(payload: dict[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, UTF-8. The one definition of the signature contract:
    the server signs with it (``coinvision.sync_server.signing``), devices verify with it."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _parse_time(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise SyncError(f"manifest field {name} is missing")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SyncError(f"manifest field {name}={value!r} is not an ISO time") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass(frozen=True)
class SyncResult:
    version: int
    updated: bool  # False when the cached pack was already the newest
    via: str  # "cache" | "full" | "delta" | "repair" (the cached pack was corrupt and was downloaded again)
    pack_path: Path
    downloaded_bytes: int


class SyncClient:
    """Keeps ``cache_dir/<catalog_id>/current.pack`` equal to the newest verified pack of one catalog."""

    def __init__(
        self,
        base_url: str,
        catalog_id: str,
        cache_dir: str | Path,
        public_key: Ed25519PublicKey | bytes | str,
        *,
        token: str | None = None,
        expected_fingerprint: str | None = None,
        timeout_s: float = 30.0,
        use_delta: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.catalog_id = catalog_id
        self.dir = Path(cache_dir) / catalog_id
        self.public_key = load_public_key(public_key)
        self.token = token
        self.expected_fingerprint = expected_fingerprint
        self.timeout_s = timeout_s
        self.use_delta = use_delta

    # ------------------------------------------------------------ cache (works offline)
    @property
    def pack_path(self) -> Path:
        return self.dir / "current.pack"

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def cached_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("sync state %s unreadable (%s); treating the cache as empty", self.state_path, exc)
            return None
        return state if isinstance(state, dict) and self.pack_path.is_file() else None

    def cached_version(self) -> int | None:
        state = self.cached_state()
        return int(state["version"]) if state else None

    def cache_intact(self, state: dict[str, Any] | None = None) -> bool:
        """True when the cached pack's bytes hash to the sha256 recorded when it was verified and installed."""
        state = state if state is not None else self.cached_state()
        if state is None:
            return False
        try:
            data = self.pack_path.read_bytes()
        except OSError:
            return False
        return hashlib.sha256(data).hexdigest() == state.get("sha256")

    def load_pack(self) -> packlib.Pack:
        """The last good pack, from the cache only (no network)."""
        state = self.cached_state()
        if state is None:
            raise SyncError(f"no cached pack for catalog {self.catalog_id!r} in {self.dir}; sync once while online")
        if not self.cache_intact(state):
            raise SyncError(
                f"the cached pack {self.pack_path} is corrupt (its sha256 is not the one installed); "
                "call sync() while online to download it again"
            )
        return packlib.read_pack(self.pack_path)

    # ------------------------------------------------------------ network
    def _request(self, url: str, headers: dict[str, str] | None = None) -> Any:
        req = urllib.request.Request(urllib.parse.urljoin(self.base_url, url.lstrip("/")), headers=headers or {})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            detail = exc.read(2000).decode("utf-8", "replace")
            raise SyncError(f"server answered {exc.code} for {url}: {detail}") from exc
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, OSError) as exc:
            raise SyncError(f"cannot reach the sync server at {self.base_url} ({exc}); using the cached pack") from exc

    def fetch_manifest(self) -> dict[str, Any]:
        """Download and verify the signed manifest; returns its payload."""
        try:
            with self._request(f"v1/catalogs/{urllib.parse.quote(self.catalog_id)}/manifest") as resp:
                doc = json.loads(resp.read(1_000_000))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SyncError(f"manifest is not valid JSON ({exc})") from exc
        except (http.client.HTTPException, TimeoutError, ConnectionError, OSError) as exc:
            raise SyncError(f"manifest download failed ({exc})") from exc
        return self.verify_manifest(doc)

    def verify_manifest(self, doc: object, now: datetime | None = None) -> dict[str, Any]:
        if not isinstance(doc, dict) or not isinstance(doc.get("payload"), dict):
            raise SyncError("manifest has no payload object")
        payload: dict[str, Any] = doc["payload"]
        try:
            signature = base64.b64decode(str(doc.get("signature", "")), validate=True)
            self.public_key.verify(signature, canonical_json(payload))
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise SyncError("manifest signature does not verify with the server public key: refusing it") from exc
        if payload.get("catalog_id") != self.catalog_id:
            raise SyncError(f"manifest is for catalog {payload.get('catalog_id')!r}, not {self.catalog_id!r}")
        now = now or datetime.now(UTC)
        if _parse_time(payload.get("expires_at"), "expires_at") < now:
            raise SyncError(f"manifest expired at {payload['expires_at']}: a stale or replayed manifest; refusing it")
        version = payload.get("version")
        if not isinstance(version, int) or version < 1:
            raise SyncError(f"manifest version {version!r} is not a positive integer")
        cached = self.cached_version()
        if cached is not None and version < cached:
            raise SyncError(
                f"manifest offers version {version}, older than the cached version {cached}: rollback refused"
            )
        fp = payload.get("model_fingerprint")
        if self.expected_fingerprint is not None and fp != self.expected_fingerprint:
            raise SyncError(
                f"catalog {self.catalog_id!r} v{version} was embedded by model {fp}, but this device's embedder is "
                f"{self.expected_fingerprint}; update the app's models before syncing"
            )
        return payload

    def _download(self, url: str, size: int, sha256: str) -> tuple[bytes, int]:
        """Download a file whose sha256 is known, resuming a previous partial download. Returns (data, fetched)."""
        downloads = self.dir / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        part = downloads / f"{sha256}.part"
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        fetched = 0
        if have < size:
            headers = {"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'} if have else {}
            with self._request(url, headers) as resp:
                mode = "ab" if resp.status == 206 and have else "wb"
                if mode == "wb":
                    have = 0
                with open(part, mode) as f:
                    try:
                        while chunk := resp.read(_CHUNK):
                            fetched += len(chunk)
                            if have + fetched > size:
                                raise SyncError(f"{url}: server sent more than the manifest's {size} bytes")
                            f.write(chunk)
                    except (http.client.HTTPException, TimeoutError, ConnectionError, OSError) as exc:
                        # Keep what arrived: the next sync resumes from here with a Range request.
                        raise SyncError(f"{url}: download interrupted after {have + fetched} bytes ({exc})") from exc
                # http.client returns b"" instead of raising when the connection drops before Content-Length.
                if have + fetched < size:
                    raise SyncError(
                        f"{url}: download interrupted after {have + fetched} of {size} bytes; the next sync resumes"
                    )
        data = part.read_bytes()
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            part.unlink()
            raise SyncError(f"{url}: downloaded file does not match the manifest's sha256 (tampered or corrupt)")
        return data, fetched

    def _check_pack(self, pack: packlib.Pack, payload: dict[str, Any]) -> None:
        problems = []
        if pack.catalog_id != self.catalog_id:
            problems.append(f"catalog {pack.catalog_id!r}")
        if pack.catalog_version != payload["version"]:
            problems.append(f"version {pack.catalog_version}")
        if pack.model_fingerprint != payload.get("model_fingerprint"):
            problems.append(f"fingerprint {pack.model_fingerprint}")
        if problems:
            raise SyncError(f"pack does not match its manifest ({', '.join(problems)}); refusing it")

    def _try_delta(self, payload: dict[str, Any], state: dict[str, Any]) -> tuple[bytes, int] | None:
        delta = payload.get("delta")
        if not self.use_delta or not isinstance(delta, dict) or delta.get("from_version") != state.get("version"):
            return None
        data, fetched = self._download(delta["url"], int(delta["size"]), str(delta["sha256"]))
        try:
            base = packlib.read_pack(self.pack_path)
            pack = packlib.apply_delta(base, data)
            self._check_pack(pack, payload)
            pack_bytes = pack.to_bytes()
        except (PackError, SyncError) as exc:
            log.warning("delta v%s -> v%s did not apply (%s); downloading the full pack",
                        delta.get("from_version"), payload["version"], exc)
            return None
        if hashlib.sha256(pack_bytes).hexdigest() != payload["pack"]["sha256"]:
            log.warning("pack rebuilt from the delta differs from the published pack; downloading the full pack")
            return None
        return pack_bytes, fetched

    def sync(self) -> SyncResult:
        """Bring the cache to the server's newest version. Raises :class:`SyncError`; the cache survives it."""
        payload = self.fetch_manifest()
        state = self.cached_state()
        intact = self.cache_intact(state)
        if state is not None and not intact:
            # Keep the state (its version still guards against rollback) but never trust or patch those bytes.
            log.warning("cached pack %s of catalog %s is corrupt; downloading the full pack again", self.pack_path,
                        self.catalog_id)
        if intact and state is not None and state.get("version") == payload["version"] and state.get(
            "sha256"
        ) == payload["pack"]["sha256"]:
            return SyncResult(payload["version"], False, "cache", self.pack_path, 0)
        got = self._try_delta(payload, state) if state is not None and intact else None
        via = "delta"
        if got is None:
            via = "full" if state is None or intact else "repair"
            got = self._download(payload["pack"]["url"], int(payload["pack"]["size"]), str(payload["pack"]["sha256"]))
            try:
                self._check_pack(packlib.read_pack(got[0]), payload)
            except PackError as exc:
                raise SyncError(f"downloaded pack is not a valid pack ({exc}); keeping the cached one") from exc
        data, fetched = got
        self.dir.mkdir(parents=True, exist_ok=True)
        # Pack first, then the state that names it: a crash between the two leaves a pack newer than its state,
        # which the next sync simply replaces.
        write_atomic(self.pack_path, data)
        new_state = {"version": payload["version"], "sha256": payload["pack"]["sha256"],
                     "model_fingerprint": payload.get("model_fingerprint"), "manifest": payload,
                     "synced_at": datetime.now(UTC).isoformat(timespec="seconds")}
        write_atomic(self.state_path, json.dumps(new_state, indent=2).encode("utf-8"))
        for leftover in (self.dir / "downloads").glob("*.part"):
            leftover.unlink()
        log.info("catalog %s synced to v%d via %s (%d bytes)", self.catalog_id, payload["version"], via, fetched)
        return SyncResult(payload["version"], True, via, self.pack_path, fetched)
