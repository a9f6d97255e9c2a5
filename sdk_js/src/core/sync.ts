/**
 * Device-side catalog sync (`sdk_python/sync_client.py`, docs/SYNC_SERVER.md "Device flow"): fetch the signed
 * manifest, verify it (Ed25519 over canonical JSON, catalog, expiry, rollback, model fingerprint), download the
 * delta or the full pack (resuming with Range), check every sha256, and replace the cached pack atomically through
 * a {@link SyncStorage} (files in Node, IndexedDB in browsers). Any failure raises SyncError and leaves the cache
 * as it was. Cache layout per catalog: `current.pack`, `state.json`, `downloads/<sha256>.part`.
 */
import * as ed from "@noble/ed25519";

import { compareCodePoints, fromBase64, sha256Hex, utf8 } from "./bytes.js";
import { PackError, SyncError } from "./errors.js";
import { applyDelta, type Pack, readPack } from "./pack.js";

/** Where one catalog's cache lives. Writes of whole files must be atomic (temp file + rename, one transaction). */
export interface SyncStorage {
  read(name: string): Promise<Uint8Array | null>;
  writeAtomic(name: string, data: Uint8Array): Promise<void>;
  append(name: string, data: Uint8Array): Promise<void>;
  /** Byte size, 0 when absent. */
  size(name: string): Promise<number>;
  remove(name: string): Promise<void>;
  /** Names starting with `prefix`. */
  list(prefix: string): Promise<string[]>;
  /** Human-readable location for messages. */
  readonly location: string;
}

export interface SyncResult {
  readonly version: number;
  readonly updated: boolean; // false when the cached pack was already the newest
  readonly via: "cache" | "full" | "delta" | "repair";
  readonly downloadedBytes: number;
}

export interface ManifestPayload {
  catalog_id: string;
  version: number;
  issued_at: string;
  expires_at: string;
  model_fingerprint: string;
  pack: { url: string; size: number; sha256: string };
  delta: { from_version: number; url: string; size: number; sha256: string } | null;
  [key: string]: unknown;
}

export interface SyncState {
  version: number;
  sha256: string;
  model_fingerprint: string | null;
  manifest: ManifestPayload;
  synced_at: string;
}

const PACK = "current.pack";
const STATE = "state.json";

/** The bytes a signature covers: sorted keys (code point order), no spaces, UTF-8 (as Python's json.dumps). */
export function canonicalJson(value: unknown): Uint8Array {
  return utf8(canonical(value));
}

function pyFloat(x: number): string {
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return String(x);
  // Python repr: exponent with at least two digits, e.g. 1e-07
  return String(x).replace(/e([+-])(\d)$/, "e$10$2");
}

function canonical(v: unknown): string {
  if (v === null) return "null";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new SyncError("manifest holds a non-finite number");
    return pyFloat(v);
  }
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (typeof v === "object") {
    const keys = Object.keys(v as object).sort(compareCodePoints);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(",")}}`;
  }
  throw new SyncError(`manifest holds an unsupported value ${String(v)}`);
}

const SPKI_ED25519_PREFIX = "302a300506032b6570032100";

/** The server's public key as 32 raw bytes: from raw bytes, base64 (`coinvision keys public`) or PEM (SPKI). */
export function loadPublicKey(key: Uint8Array | string): Uint8Array {
  let raw: Uint8Array;
  try {
    if (typeof key === "string") {
      const text = key.trim();
      if (text.startsWith("-----BEGIN")) {
        const der = fromBase64(text.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""));
        const hex = Array.from(der, (b) => b.toString(16).padStart(2, "0")).join("");
        if (der.length !== 44 || !hex.startsWith(SPKI_ED25519_PREFIX)) throw new TypeError("public key PEM is not an Ed25519 key");
        raw = der.subarray(12);
      } else {
        raw = fromBase64(text);
      }
    } else {
      raw = key;
    }
  } catch (e) {
    throw new SyncError(`server public key is not valid (${(e as Error).message}); use the output of \`coinvision keys public\``, { cause: e });
  }
  if (raw.length !== 32) {
    throw new SyncError(`server public key is ${raw.length} bytes, not the 32 of an Ed25519 key; use the output of \`coinvision keys public\``);
  }
  return raw;
}

function parseTime(value: unknown, name: string): number {
  if (typeof value !== "string") throw new SyncError(`manifest field ${name} is missing`);
  const t = Date.parse(/[zZ]|[+-]\d\d:\d\d$/.test(value) ? value : `${value}Z`);
  if (Number.isNaN(t)) throw new SyncError(`manifest field ${name}=${JSON.stringify(value)} is not an ISO time`);
  return t;
}

export interface SyncClientOptions {
  token?: string;
  expectedFingerprint?: string;
  timeoutMs?: number;
  useDelta?: boolean;
  /** An injected fetch (tests, React Native polyfills); default: globalThis.fetch. */
  fetch?: typeof fetch;
}

/** Keeps `current.pack` of one catalog equal to the newest verified pack. */
export class SyncClient {
  readonly baseUrl: string;
  readonly publicKey: Uint8Array;
  private readonly fetchFn: typeof fetch;

  constructor(
    baseUrl: string,
    readonly catalogId: string,
    readonly storage: SyncStorage,
    publicKey: Uint8Array | string,
    readonly options: SyncClientOptions = {},
  ) {
    this.baseUrl = baseUrl.replace(/\/+$/, "") + "/";
    this.publicKey = loadPublicKey(publicKey);
    this.fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  // ------------------------------------------------------------------ cache (works offline)

  async cachedState(): Promise<SyncState | null> {
    const raw = await this.storage.read(STATE);
    if (!raw) return null;
    let state: unknown;
    try {
      state = JSON.parse(new TextDecoder().decode(raw));
    } catch {
      return null; // unreadable state: treat the cache as empty
    }
    if (!state || typeof state !== "object" || !(await this.storage.size(PACK))) return null;
    return state as SyncState;
  }

  async cachedVersion(): Promise<number | null> {
    const s = await this.cachedState();
    return s ? Number(s.version) : null;
  }

  /** True when the cached pack hashes to the sha256 recorded when it was verified and installed. */
  async cacheIntact(state?: SyncState | null): Promise<boolean> {
    const s = state === undefined ? await this.cachedState() : state;
    if (!s) return false;
    const data = await this.storage.read(PACK);
    return !!data && sha256Hex(data) === s.sha256;
  }

  /** The last good pack, from the cache only (no network). */
  async loadPack(): Promise<Pack> {
    const state = await this.cachedState();
    if (!state) throw new SyncError(`no cached pack for catalog ${JSON.stringify(this.catalogId)} in ${this.storage.location}; sync once while online`);
    const data = await this.storage.read(PACK);
    if (!data || sha256Hex(data) !== state.sha256) {
      throw new SyncError(`the cached pack in ${this.storage.location} is corrupt (its sha256 is not the one installed); call sync() while online to download it again`);
    }
    return readPack(data, { name: `cached pack ${this.storage.location}` });
  }

  // ------------------------------------------------------------------ network

  private async request(url: string, headers: Record<string, string> = {}): Promise<Response> {
    const h: Record<string, string> = { ...headers };
    if (this.options.token) h.Authorization = `Bearer ${this.options.token}`;
    let resp: Response;
    try {
      resp = await this.fetchFn(new URL(url.replace(/^\/+/, ""), this.baseUrl).toString(), {
        headers: h, signal: AbortSignal.timeout(this.options.timeoutMs ?? 30_000),
      });
    } catch (e) {
      throw new SyncError(`cannot reach the sync server at ${this.baseUrl} (${(e as Error)?.message ?? e}); using the cached pack`, { cause: e });
    }
    if (!resp.ok) {
      const detail = (await resp.text().catch(() => "")).slice(0, 2000);
      throw new SyncError(`server answered ${resp.status} for ${url}: ${detail}`);
    }
    return resp;
  }

  /** Download and verify the signed manifest; returns its payload. */
  async fetchManifest(): Promise<ManifestPayload> {
    const resp = await this.request(`v1/catalogs/${encodeURIComponent(this.catalogId)}/manifest`);
    let doc: unknown;
    try {
      doc = JSON.parse(await resp.text());
    } catch (e) {
      throw new SyncError(`manifest is not valid JSON (${(e as Error).message})`, { cause: e });
    }
    return this.verifyManifest(doc);
  }

  async verifyManifest(doc: unknown, now: Date = new Date()): Promise<ManifestPayload> {
    const d = doc as { payload?: unknown; signature?: unknown };
    if (!d || typeof d !== "object" || !d.payload || typeof d.payload !== "object" || Array.isArray(d.payload)) {
      throw new SyncError("manifest has no payload object");
    }
    const payload = d.payload as ManifestPayload;
    let ok = false;
    try {
      const sig = fromBase64(String(d.signature ?? ""));
      ok = sig.length === 64 && (await ed.verifyAsync(sig, canonicalJson(payload), this.publicKey));
    } catch {
      ok = false;
    }
    if (!ok) throw new SyncError("manifest signature does not verify with the server public key: refusing it");
    if (payload.catalog_id !== this.catalogId) {
      throw new SyncError(`manifest is for catalog ${JSON.stringify(payload.catalog_id)}, not ${JSON.stringify(this.catalogId)}`);
    }
    if (parseTime(payload.expires_at, "expires_at") < now.getTime()) {
      throw new SyncError(`manifest expired at ${payload.expires_at}: a stale or replayed manifest; refusing it`);
    }
    const version = payload.version;
    if (!Number.isInteger(version) || version < 1) throw new SyncError(`manifest version ${JSON.stringify(version)} is not a positive integer`);
    const cached = await this.cachedVersion();
    if (cached !== null && version < cached) {
      throw new SyncError(`manifest offers version ${version}, older than the cached version ${cached}: rollback refused`);
    }
    const fp = payload.model_fingerprint;
    if (this.options.expectedFingerprint !== undefined && fp !== this.options.expectedFingerprint) {
      throw new SyncError(
        `catalog ${JSON.stringify(this.catalogId)} v${version} was embedded by model ${fp}, but this device's embedder is ${this.options.expectedFingerprint}; update the app's models before syncing`,
      );
    }
    return payload;
  }

  /** Download a file whose sha256 is known, resuming a previous partial download. */
  private async download(url: string, size: number, sha256: string): Promise<{ data: Uint8Array; fetched: number }> {
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new SyncError(`manifest sha256 ${JSON.stringify(sha256)} is not a hex sha256`);
    const part = `downloads/${sha256}.part`;
    let have = await this.storage.size(part);
    if (have > size) {
      await this.storage.remove(part);
      have = 0;
    }
    let fetched = 0;
    if (have < size) {
      const headers: Record<string, string> = have ? { Range: `bytes=${have}-`, "If-Range": `"${sha256}"` } : {};
      const resp = await this.request(url, headers);
      if (!(resp.status === 206 && have)) {
        await this.storage.writeAtomic(part, new Uint8Array(0));
        have = 0;
      }
      if (!resp.body) throw new SyncError(`${url}: the response has no body`);
      const reader = resp.body.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          fetched += value.length;
          if (have + fetched > size) {
            await reader.cancel().catch(() => undefined);
            await this.storage.remove(part);
            throw new SyncError(`${url}: server sent more than the manifest's ${size} bytes`);
          }
          await this.storage.append(part, value);
        }
      } catch (e) {
        if (e instanceof SyncError) throw e;
        // keep what arrived: the next sync resumes from here with a Range request
        throw new SyncError(`${url}: download interrupted after ${have + fetched} bytes (${(e as Error)?.message ?? e}); the next sync resumes`, { cause: e });
      }
      if (have + fetched < size) {
        throw new SyncError(`${url}: download interrupted after ${have + fetched} of ${size} bytes; the next sync resumes`);
      }
    }
    const data = (await this.storage.read(part)) ?? new Uint8Array(0);
    if (data.length !== size || sha256Hex(data) !== sha256) {
      await this.storage.remove(part);
      throw new SyncError(`${url}: downloaded file does not match the manifest's sha256 (tampered or corrupt)`);
    }
    return { data, fetched };
  }

  private checkPack(pack: Pack, payload: ManifestPayload): void {
    const problems: string[] = [];
    if (pack.catalogId !== this.catalogId) problems.push(`catalog ${JSON.stringify(pack.catalogId)}`);
    if (pack.catalogVersion !== payload.version) problems.push(`version ${pack.catalogVersion}`);
    if (pack.modelFingerprint !== payload.model_fingerprint) problems.push(`fingerprint ${pack.modelFingerprint}`);
    if (problems.length) throw new SyncError(`pack does not match its manifest (${problems.join(", ")}); refusing it`);
  }

  private async tryDelta(payload: ManifestPayload, state: SyncState): Promise<{ data: Uint8Array; fetched: number } | null> {
    const delta = payload.delta;
    if (this.options.useDelta === false || !delta || typeof delta !== "object" || delta.from_version !== state.version) return null;
    const { data, fetched } = await this.download(delta.url, Number(delta.size), String(delta.sha256));
    let bytes: Uint8Array;
    try {
      const base = readPack((await this.storage.read(PACK))!);
      const pack = applyDelta(base, data);
      this.checkPack(pack, payload);
      bytes = pack.toBytes();
    } catch (e) {
      if (e instanceof PackError || e instanceof SyncError) return null; // fall back to the full pack
      throw e;
    }
    if (sha256Hex(bytes) !== payload.pack.sha256) return null;
    return { data: bytes, fetched };
  }

  /** Bring the cache to the server's newest version. Raises SyncError; the cache survives it. */
  async sync(): Promise<SyncResult> {
    const payload = await this.fetchManifest();
    const state = await this.cachedState();
    const intact = await this.cacheIntact(state);
    if (intact && state && state.version === payload.version && state.sha256 === payload.pack?.sha256) {
      return { version: payload.version, updated: false, via: "cache", downloadedBytes: 0 };
    }
    let got = state && intact ? await this.tryDelta(payload, state) : null;
    let via: SyncResult["via"] = "delta";
    if (!got) {
      via = !state || intact ? "full" : "repair";
      if (!payload.pack || typeof payload.pack !== "object") throw new SyncError("manifest names no pack");
      got = await this.download(payload.pack.url, Number(payload.pack.size), String(payload.pack.sha256));
      try {
        this.checkPack(readPack(got.data), payload);
      } catch (e) {
        if (e instanceof PackError) throw new SyncError(`downloaded pack is not a valid pack (${e.message}); keeping the cached one`, { cause: e });
        throw e;
      }
    }
    // pack first, then the state that names it: a crash between the two leaves a pack newer than its state
    await this.storage.writeAtomic(PACK, got.data);
    const newState: SyncState = {
      version: payload.version, sha256: payload.pack.sha256, model_fingerprint: payload.model_fingerprint ?? null,
      manifest: payload, synced_at: new Date().toISOString().replace(/\.\d+Z$/, "+00:00"),
    };
    await this.storage.writeAtomic(STATE, utf8(JSON.stringify(newState, null, 2)));
    for (const leftover of await this.storage.list("downloads/")) await this.storage.remove(leftover);
    return { version: payload.version, updated: true, via, downloadedBytes: got.fetched };
  }
}
