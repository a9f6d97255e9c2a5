/**
 * Browser entry point (also the PWA's bundle, dist/browser/coinvision.js): the core plus onnxruntime-web models,
 * the platform's image decoder (createImageBitmap, EXIF orientation applied by the browser) and an IndexedDB cache.
 */
import { ImageError, ModelLoadError } from "./errors.js";
import type { DecodedImage, ImageDecoder } from "./images.js";
import { parseMetadata } from "./meta.js";
import type { Pack } from "./pack.js";
import { type LoadedModel, Recognizer, type RecognizerOptions, Segmenter } from "./recognizer.js";
import { type OrtModule, OrtModel } from "./runtime.js";
import type { SyncStorage } from "./sync.js";

export * from "./index.js";

/** Decodes with the browser (JPEG, PNG, WebP...): createImageBitmap + OffscreenCanvas, orientation from EXIF. */
export class BrowserImageDecoder implements ImageDecoder {
  async decode(bytes: Uint8Array): Promise<DecodedImage> {
    let bitmap: ImageBitmap;
    try {
      bitmap = await createImageBitmap(new Blob([bytes as BlobPart]), { imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none" });
    } catch (e) {
      throw new ImageError(`image: the browser cannot decode it (${(e as Error)?.message ?? e}); use a JPEG, PNG or WebP photo`, { cause: e });
    }
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true })!;
    ctx.drawImage(bitmap, 0, 0);
    const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    bitmap.close();
    return { width: canvas.width, height: canvas.height, channels: 4, data, orientation: 1 };
  }
}

/** One catalog's sync cache in IndexedDB (one object store; each write is one transaction, so atomic). */
export class IndexedDbStorage implements SyncStorage {
  private db: Promise<IDBDatabase>;
  readonly location: string;

  constructor(catalogId: string, dbName = "coinvision-cache") {
    this.location = `indexeddb:${dbName}/${catalogId}`;
    const prefix = `${catalogId}/`;
    this.key = (name: string) => prefix + name;
    this.db = new Promise((resolve, reject) => {
      const req = indexedDB.open(dbName, 1);
      req.onupgradeneeded = () => req.result.createObjectStore("files");
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    this.prefix = prefix;
  }

  private readonly key: (name: string) => string;
  private readonly prefix: string;

  private async tx<T>(mode: IDBTransactionMode, fn: (s: IDBObjectStore) => IDBRequest<T> | void): Promise<T | undefined> {
    const db = await this.db;
    return new Promise((resolve, reject) => {
      const t = db.transaction("files", mode);
      const req = fn(t.objectStore("files"));
      t.oncomplete = () => resolve(req ? req.result : undefined);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error);
    });
  }

  async read(name: string) {
    const v = await this.tx<Uint8Array>("readonly", (s) => s.get(this.key(name)));
    return v ? new Uint8Array(v) : null;
  }
  async writeAtomic(name: string, data: Uint8Array) {
    await this.tx("readwrite", (s) => void s.put(data.slice(), this.key(name)));
  }
  async append(name: string, data: Uint8Array) {
    const have = (await this.read(name)) ?? new Uint8Array(0);
    const out = new Uint8Array(have.length + data.length);
    out.set(have);
    out.set(data, have.length);
    await this.writeAtomic(name, out);
  }
  async size(name: string) {
    return (await this.read(name))?.length ?? 0;
  }
  async remove(name: string) {
    await this.tx("readwrite", (s) => void s.delete(this.key(name)));
  }
  async list(prefix: string) {
    const keys = (await this.tx<IDBValidKey[]>("readonly", (s) => s.getAllKeys())) ?? [];
    return keys.map(String).filter((k) => k.startsWith(this.prefix + prefix)).map((k) => k.slice(this.prefix.length));
  }
}

export interface UrlModels {
  /** Base URL of a folder with segmenter.onnx, embedder.onnx and their .meta.json sidecars. */
  baseUrl: string;
  /** The onnxruntime-web module (import * as ort from "onnxruntime-web"), or onnxruntime-react-native. */
  ort: OrtModule;
  fetch?: typeof fetch;
  onProgress?: (file: string, loaded: number, total: number) => void;
}

async function fetchBytes(url: string, f: typeof fetch, onProgress?: UrlModels["onProgress"]): Promise<Uint8Array> {
  const r = await f(url);
  if (!r.ok || !r.body) throw new ModelLoadError(`${url}: ${r.status}; check the models URL`);
  const total = Number(r.headers.get("content-length") ?? 0);
  const reader = r.body.getReader();
  const parts: Uint8Array[] = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    loaded += value.length;
    onProgress?.(url, loaded, total);
  }
  const out = new Uint8Array(loaded);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

/** A model from `<baseUrl>/<kind>.onnx` (+ sidecar) on onnxruntime-web. */
export async function loadModelFromUrl(kind: "segmenter" | "embedder", o: UrlModels): Promise<LoadedModel> {
  const f = o.fetch ?? globalThis.fetch.bind(globalThis);
  const base = o.baseUrl.replace(/\/+$/, "");
  const url = `${base}/${kind}.onnx`;
  const meta = parseMetadata(new TextDecoder().decode(await fetchBytes(`${url}.meta.json`, f)), `${url}.meta.json`);
  const runtime = await OrtModel.create(o.ort, await fetchBytes(url, f, o.onProgress), { where: url });
  return { meta, runtime, where: url };
}

/** `Recognizer` from a models URL, decoding with the browser. */
export async function recognizerFromUrl(o: UrlModels & Omit<RecognizerOptions, "pack"> & { pack?: Pack | Uint8Array }): Promise<Recognizer> {
  const seg = await Segmenter.create(await loadModelFromUrl("segmenter", o));
  const emb = await loadModelFromUrl("embedder", o);
  return Recognizer.create(seg, emb, { ...o, decoder: o.decoder ?? new BrowserImageDecoder() });
}
