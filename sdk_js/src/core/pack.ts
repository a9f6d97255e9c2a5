/**
 * The catalog embedding pack (docs/PACK_FORMAT.md): reader with every check of the reference, exact cosine
 * search, delta reader/applier and canonical serialisation. Only PackError subclasses come out of hostile bytes,
 * and nothing is allocated from header counts before the length check.
 */
import { compareBytes, concatBytes, decodeUtf8Strict, halfToFloat, sha256, toHex, utf8 } from "./bytes.js";
import {
  PackChecksumError,
  PackDeltaError,
  PackDimError,
  PackError,
  PackFingerprintError,
  PackFormatError,
  PackMagicError,
  PackQueryError,
  PackTruncatedError,
  PackVersionError,
} from "./errors.js";

export const FORMAT_VERSION = 1;
export const HEADER_BYTES = 64;
export const CHECKSUM_BYTES = 32;
export const MAX_DIM = 4096;
export const MAX_PACK_BYTES = 2 ** 31;
/** Vector encodings: `int8`, `fp16`, `fp32`, and `ivfpq` (world-sized packs, docs/PACK_FORMAT.md section 8). */
export type Quant = "int8" | "fp16" | "fp32" | "ivfpq";
/** The encodings deltas support; `ivfpq` ships as full packs only (its codebooks are trained per pack). */
export const QUANTS: readonly Quant[] = ["int8", "fp16", "fp32"];
export const ALL_QUANTS: readonly Quant[] = [...QUANTS, "ivfpq"];
const QUANT_CODE: Record<Quant, number> = { int8: 1, fp16: 2, fp32: 3, ivfpq: 4 };
/** Bytes per stored component (ivfpq: one u8 code per sub-space, see {@link IvfIndex}). */
const QUANT_WIDTH: Record<Quant, number> = { int8: 1, fp16: 2, fp32: 4, ivfpq: 1 };
/** ivfpq: entries per sub-space codebook (one-byte codes), size of the index header, the only code size. */
export const IVF_CODEBOOK_SIZE = 256;
export const IVF_INDEX_HEADER_BYTES = 16;
const IVF_CODE_BITS = 8;
const PACK_MAGIC = "CVPK";
const DELTA_MAGIC = "CVPD";
const RECORD_FIELDS = ["coinId", "label", "country", "currency", "denomination", "side", "years"] as const;
const MIN_RECORD_BYTES = 2 * RECORD_FIELDS.length + 2;
const FIX_BUILD = "rebuild the pack with `coinvision pack build` or download it again";
/** Extra coins kept in the shortlist that float64 rescoring may reorder (as the reference). */
export const RESCORE_EXTRA = 16;

/** What a catalog knows about one coin; `coinId` is its key in the pack. */
export interface CoinRecord {
  readonly coinId: string;
  readonly label: string;
  readonly country: string;
  readonly currency: string;
  readonly denomination: string;
  readonly side: string;
  readonly years: string;
  /** Extra fields in key order (e.g. `coin_group`). */
  readonly extra: Readonly<Record<string, string>>;
}

export type SearchHit = readonly [coinId: string, score: number];

// ------------------------------------------------------------------------------------------------ encoding

function str16(value: string, what: string): Uint8Array {
  const raw = utf8(value);
  if (raw.length > 0xffff) throw new PackFormatError(`${what} is ${raw.length} bytes as UTF-8, above 65535; shorten it`);
  const out = new Uint8Array(2 + raw.length);
  out[0] = raw.length & 0xff;
  out[1] = raw.length >> 8;
  out.set(raw, 2);
  return out;
}

function recordBytes(rec: CoinRecord): Uint8Array {
  const parts = RECORD_FIELDS.map((f) => str16(rec[f], `coin ${JSON.stringify(rec.coinId)} ${f}`));
  const keys = Object.keys(rec.extra).sort((a, b) => compareBytes(utf8(a), utf8(b)));
  parts.push(new Uint8Array([keys.length & 0xff, keys.length >> 8]));
  for (const k of keys) {
    parts.push(str16(k, "extra key"), str16(rec.extra[k]!, `extra[${k}]`));
  }
  return concatBytes(parts);
}

function seal(body: Uint8Array): Uint8Array {
  return concatBytes([body, sha256(body)]);
}

// ------------------------------------------------------------------------------------------------ decoding

class Cursor {
  pos: number;
  constructor(
    private readonly buf: Uint8Array,
    start: number,
    private readonly end: number,
    private readonly section: string,
  ) {
    this.pos = start;
  }

  take(n: number, what: string): Uint8Array {
    if (n > this.end - this.pos) {
      throw new PackFormatError(
        `${this.section}: ${what} at byte ${this.pos} runs past the end of the section; the file is corrupt, ${FIX_BUILD}`,
      );
    }
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  u16(what: string): number {
    const b = this.take(2, what);
    return b[0]! | (b[1]! << 8);
  }

  /** A str16 as [text, raw bytes]. */
  text(what: string): [string, Uint8Array] {
    const raw = this.take(this.u16(what), what);
    try {
      return [decodeUtf8Strict(raw), raw];
    } catch {
      throw new PackFormatError(`${this.section}: ${what} is not valid UTF-8; ${FIX_BUILD}`);
    }
  }

  record(): CoinRecord {
    const values = RECORD_FIELDS.map((f) => this.text(`coin ${f}`)[0]);
    if (!values[0]) throw new PackFormatError(`${this.section}: a coin has an empty coin_id; ${FIX_BUILD}`);
    const extra: Record<string, string> = {};
    let previous: Uint8Array = new Uint8Array(0);
    const count = this.u16("extra count");
    for (let i = 0; i < count; i++) {
      const [key, raw] = this.text("extra key");
      if (compareBytes(raw, previous) <= 0) {
        throw new PackFormatError(
          `${this.section}: extra keys of coin ${JSON.stringify(values[0])} are not unique, non-empty and sorted; ${FIX_BUILD}`,
        );
      }
      extra[key] = this.text("extra value")[0];
      previous = raw;
    }
    return {
      coinId: values[0]!, label: values[1]!, country: values[2]!, currency: values[3]!,
      denomination: values[4]!, side: values[5]!, years: values[6]!, extra: Object.freeze(extra),
    };
  }

  finish(): void {
    if (this.pos !== this.end) {
      throw new PackFormatError(`${this.section}: ${this.end - this.pos} unexpected bytes at its end; ${FIX_BUILD}`);
    }
  }
}

function latin(b: Uint8Array): string {
  return String.fromCharCode(...b);
}

function checkEnvelope(buf: Uint8Array, magic: string, kind: "pack" | "delta", name: string): void {
  const head = latin(buf.subarray(0, 4));
  const other = magic === PACK_MAGIC ? DELTA_MAGIC : PACK_MAGIC;
  const truncated = `${name} is only ${buf.length} bytes: truncated (interrupted download); download it again`;
  if (head.length < 4 && magic.startsWith(head)) throw new PackTruncatedError(truncated);
  if (head === other) {
    throw new PackMagicError(
      `${name}: ${kind === "pack" ? "this is a delta pack: apply it to its base with applyDelta(base, delta)" : "this is a full pack, not a delta: read it with readPack"}`,
    );
  }
  if (head !== magic) {
    throw new PackMagicError(
      `${name} does not start with the ${kind} magic ${magic} (found ${JSON.stringify(head)}): not a coinvision ${kind}; check that the right file was downloaded`,
    );
  }
  if (buf.length < 6) throw new PackTruncatedError(truncated);
  const version = buf[4]! | (buf[5]! << 8);
  if (version > FORMAT_VERSION) {
    throw new PackVersionError(
      `${name} uses format version ${version}, newer than the ${FORMAT_VERSION} this SDK reads; update the app/SDK (or ask the server for a version-1 pack)`,
    );
  }
  if (version !== FORMAT_VERSION) {
    throw new PackFormatError(`${name} declares format version ${version}, which never existed; the file is corrupt`);
  }
  if (buf.length < HEADER_BYTES + CHECKSUM_BYTES) {
    throw new PackTruncatedError(
      `${name} is ${buf.length} bytes, less than the ${HEADER_BYTES + CHECKSUM_BYTES}-byte minimum: truncated (interrupted download); download it again`,
    );
  }
}

function checkLengthAndChecksum(buf: Uint8Array, expected: number, name: string): void {
  if (buf.length < expected) {
    throw new PackTruncatedError(
      `${name} is ${buf.length} bytes but its header describes ${expected}: truncated (interrupted download or corrupt header); download it again`,
    );
  }
  if (buf.length > expected) {
    throw new PackFormatError(
      `${name} is ${buf.length} bytes but its header describes ${expected}: ${buf.length - expected} trailing bytes (two files concatenated or a corrupt header); download it again`,
    );
  }
  const digest = sha256(buf.subarray(0, expected - CHECKSUM_BYTES));
  if (compareBytes(digest, buf.subarray(expected - CHECKSUM_BYTES)) !== 0) {
    throw new PackChecksumError(
      `${name}: sha256 of the content does not match the stored checksum: corrupted in transit or on disk; download it again`,
    );
  }
}

function decodeHeaderCodes(view: DataView, name: string): { quant: Quant; dim: number } {
  const quantCode = view.getUint8(6);
  const quant = ALL_QUANTS.find((q) => QUANT_CODE[q] === quantCode);
  if (!quant) {
    throw new PackFormatError(`${name}: unknown quantization code ${quantCode} (1=int8, 2=fp16, 3=fp32, 4=ivfpq); ${FIX_BUILD}`);
  }
  const metric = view.getUint8(7);
  if (metric !== 1) throw new PackFormatError(`${name}: unknown metric code ${metric} (1=cosine); ${FIX_BUILD}`);
  const dim = view.getUint16(8, true);
  if (dim < 1 || dim > MAX_DIM) throw new PackFormatError(`${name}: embedding dim ${dim} is outside 1..${MAX_DIM}; ${FIX_BUILD}`);
  return { quant, dim };
}

function checkReserved(view: DataView, flagsAt: number, from: number, name: string): void {
  let bad = view.getUint16(flagsAt, true) !== 0;
  for (let i = from; i < HEADER_BYTES && !bad; i++) bad = view.getUint8(i) !== 0;
  if (bad) throw new PackFormatError(`${name}: reserved header bytes are not zero (written by an unknown tool); ${FIX_BUILD}`);
}

/** Bytes of the vector section, int8/fp16/fp32 (exact in float64 for any u32 count: < 2^53). */
function vectorBytes(n: number, dim: number, quant: Quant): number {
  return n * (4 + (quant === "int8" ? 4 : 0) + dim * QUANT_WIDTH[quant]);
}

/**
 * Bytes of an ivfpq vector section (docs/PACK_FORMAT.md 8.1): index header, list offsets, centroids, codebooks,
 * coin index and codes. Exact in float64: at most ~1.8e13 for hostile u32/u16 header fields (< 2^53).
 */
function ivfSectionBytes(n: number, dim: number, lists: number, subspaces: number): number {
  return IVF_INDEX_HEADER_BYTES + 4 * (lists + 1) + 4 * lists * dim + 4 * IVF_CODEBOOK_SIZE * dim + n * (4 + subspaces);
}

/** What an ivfpq reader needs besides the codes (docs/PACK_FORMAT.md 8.1). */
export interface IvfIndex {
  /** `L`: coarse centroids (lists). */
  readonly lists: number;
  /** `P`: lists a search scans (from the pack; 1..L). */
  readonly nprobe: number;
  /** `M`: one-byte codes per vector; `dim / M` components per sub-space. */
  readonly subspaces: number;
  /** `L + 1` offsets: list `l` holds vectors `offsets[l] .. offsets[l+1] - 1`. */
  readonly offsets: Uint32Array;
  /** `L x dim` float32, row-major. */
  readonly centroids: Float32Array;
  /** `M x 256 x (dim / M)` float32: `B[j][k]` at `(j * 256 + k) * (dim / M)`. */
  readonly codebooks: Float32Array;
}

interface VectorSection {
  coinIndex: Uint32Array;
  scales: Float32Array | null;
  /** Stored values as numbers: int8 codes, fp16 widened to float32 values, fp32 values, ivfpq `N x M` codes. */
  data: Int8Array | Float32Array | Uint8Array;
  /** The raw bytes of the stored vectors (for byte-exact serialisation and change detection); ivfpq: the codes. */
  raw: Uint8Array;
  /** ivfpq only: the index (vectors are stored list by list). */
  ivf?: IvfIndex | null;
}

/** `(lists, nprobe, subspaces)` of an ivfpq vector section, each checked (docs/PACK_FORMAT.md 8.1). */
function readIvfHeader(buf: Uint8Array, view: DataView, dim: number, name: string): [number, number, number] {
  if (buf.length < HEADER_BYTES + IVF_INDEX_HEADER_BYTES + CHECKSUM_BYTES) {
    throw new PackTruncatedError(
      `${name} is ${buf.length} bytes, too short for its ivfpq index header: truncated (interrupted download); download it again`,
    );
  }
  const lists = view.getUint16(HEADER_BYTES, true);
  const nprobe = view.getUint16(HEADER_BYTES + 2, true);
  const subspaces = view.getUint16(HEADER_BYTES + 4, true);
  const codeBits = view.getUint16(HEADER_BYTES + 6, true);
  if (lists < 1) throw new PackFormatError(`${name}: ivfpq list_count is 0 (must be 1..65535); ${FIX_BUILD}`);
  if (nprobe < 1 || nprobe > lists) {
    throw new PackFormatError(`${name}: ivfpq nprobe ${nprobe} is outside 1..list_count (${lists}); ${FIX_BUILD}`);
  }
  if (subspaces < 1 || dim % subspaces !== 0) {
    throw new PackFormatError(`${name}: ivfpq subspace_count ${subspaces} does not divide dim ${dim} (must be >= 1); ${FIX_BUILD}`);
  }
  if (codeBits !== IVF_CODE_BITS) {
    throw new PackFormatError(`${name}: ivfpq code_bits ${codeBits} is not 8 (the only code size); ${FIX_BUILD}`);
  }
  for (let i = HEADER_BYTES + 8; i < HEADER_BYTES + IVF_INDEX_HEADER_BYTES; i++) {
    if (buf[i] !== 0) throw new PackFormatError(`${name}: ivfpq reserved bytes are not zero (written by an unknown tool); ${FIX_BUILD}`);
  }
  return [lists, nprobe, subspaces];
}

/** Index, coin index and codes of an ivfpq section: copies (the input may be reused). */
function readIvfSection(buf: Uint8Array, n: number, dim: number, lists: number, nprobe: number, subspaces: number): VectorSection {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = HEADER_BYTES + IVF_INDEX_HEADER_BYTES;
  const offsets = new Uint32Array(lists + 1);
  for (let i = 0; i <= lists; i++, pos += 4) offsets[i] = view.getUint32(pos, true);
  const centroids = new Float32Array(lists * dim);
  for (let i = 0; i < centroids.length; i++, pos += 4) centroids[i] = view.getFloat32(pos, true);
  const codebooks = new Float32Array(IVF_CODEBOOK_SIZE * dim);
  for (let i = 0; i < codebooks.length; i++, pos += 4) codebooks[i] = view.getFloat32(pos, true);
  const coinIndex = new Uint32Array(n);
  for (let i = 0; i < n; i++, pos += 4) coinIndex[i] = view.getUint32(pos, true);
  const codes = buf.slice(pos, pos + n * subspaces);
  return { coinIndex, scales: null, data: codes, raw: codes, ivf: { lists, nprobe, subspaces, offsets, centroids, codebooks } };
}

/** What is wrong with an ivfpq section (null when canonical): offsets, finiteness, coin index order. */
function ivfProblem(v: VectorSection, ivf: IvfIndex, coins: number, dim: number): string | null {
  const n = v.coinIndex.length;
  if ((n === 0) !== (coins === 0)) return `${n} vectors but ${coins} coins (every coin needs at least one vector)`;
  const off = ivf.offsets;
  const lists = ivf.lists;
  let ok = off.length === lists + 1 && off[0] === 0 && off[lists] === n;
  for (let l = 0; l < lists && ok; l++) ok = off[l + 1]! >= off[l]!;
  if (!ok) return `ivfpq list offsets do not run from 0 to vector_count (${n}) without decreasing`;
  if (ivf.centroids.length !== lists * dim || ivf.codebooks.length !== IVF_CODEBOOK_SIZE * dim
    || !ivf.centroids.every(Number.isFinite) || !ivf.codebooks.every(Number.isFinite)) {
    return "an ivfpq centroid or codebook entry holds NaN or infinity";
  }
  if (n) {
    const seen = new Uint8Array(coins);
    for (let i = 0; i < n; i++) {
      const c = v.coinIndex[i]!;
      if (c >= coins) return `a coin index is >= coin_count (${coins})`;
      seen[c] = 1;
    }
    if (seen.includes(0)) return "a coin has no vector";
    // Canonical order: within a list, vectors ascend by coin (the builder's stable order).
    for (let l = 0; l < lists; l++) {
      for (let i = off[l]! + 1; i < off[l + 1]!; i++) {
        if (v.coinIndex[i]! < v.coinIndex[i - 1]!) return "vectors of an ivfpq list are not in coin order";
      }
    }
  }
  if (v.data.length !== n * ivf.subspaces) return "ivfpq codes do not match the vector count";
  return null;
}

/** List index of every vector, from the `L + 1` offsets (validated). */
function listOfVectors(ivf: IvfIndex, n: number): Uint32Array {
  const out = new Uint32Array(n);
  for (let l = 0; l < ivf.lists; l++) out.fill(l, ivf.offsets[l]!, ivf.offsets[l + 1]!);
  return out;
}

/** Dequantised vector `i` of list `l` into `out`: `c_l + concat_j B[j][code_ij]`, one float32 addition each. */
function decodeIvf(ivf: IvfIndex, codes: Uint8Array | Int8Array | Float32Array, dim: number, i: number, l: number, out: Float32Array): void {
  const m = ivf.subspaces;
  const dsub = dim / m;
  for (let j = 0; j < m; j++) {
    const entry = (j * IVF_CODEBOOK_SIZE + codes[i * m + j]!) * dsub;
    for (let t = 0; t < dsub; t++) {
      const x = j * dsub + t;
      out[x] = ivf.centroids[l * dim + x]! + ivf.codebooks[entry + t]!;
    }
  }
}

function readVectors(buf: Uint8Array, n: number, dim: number, quant: Quant): VectorSection {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = HEADER_BYTES;
  const coinIndex = new Uint32Array(n);
  for (let i = 0; i < n; i++, pos += 4) coinIndex[i] = view.getUint32(pos, true);
  let scales: Float32Array | null = null;
  if (quant === "int8") {
    scales = new Float32Array(n);
    for (let i = 0; i < n; i++, pos += 4) scales[i] = view.getFloat32(pos, true);
  }
  const count = n * dim;
  const raw = buf.slice(pos, pos + count * QUANT_WIDTH[quant]);
  let data: Int8Array | Float32Array;
  if (quant === "int8") {
    data = new Int8Array(raw.buffer, raw.byteOffset, count).slice();
  } else {
    data = new Float32Array(count);
    const rv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    for (let i = 0; i < count; i++) data[i] = quant === "fp16" ? halfToFloat(rv.getUint16(2 * i, true)) : rv.getFloat32(4 * i, true);
  }
  return { coinIndex, scales, data, raw };
}

function arrayProblem(v: VectorSection, coins: number, dim: number, quant: Quant): string | null {
  const n = v.coinIndex.length;
  if ((n === 0) !== (coins === 0)) return `${n} vectors but ${coins} coins (every coin needs at least one vector)`;
  if (n) {
    let ok = v.coinIndex[0] === 0 && v.coinIndex[n - 1] === coins - 1;
    for (let i = 1; i < n && ok; i++) {
      const step = v.coinIndex[i]! - v.coinIndex[i - 1]!;
      ok = step === 0 || step === 1;
    }
    if (!ok) return "vectors are not grouped by coin in coin-table order, or a coin has no vector";
  }
  if (v.scales && !v.scales.every((s) => Number.isFinite(s) && s > 0)) return "an int8 scale is zero, negative or not finite";
  if (quant === "int8") {
    if (v.data.some((c) => c === -128)) return "an int8 code is -128 (codes are symmetric, -127..127)";
  } else if (!v.data.every((x) => Number.isFinite(x))) {
    return "a vector holds NaN or infinity";
  }
  for (let i = 0; i < n; i++) {
    let any = false;
    for (let j = i * dim; j < (i + 1) * dim && !any; j++) any = v.data[j] !== 0;
    if (!any) return "a vector is all zeros (cosine undefined)";
  }
  return null;
}

// ------------------------------------------------------------------------------------------------ the pack

interface PackInit {
  catalogId: string;
  catalogVersion: number;
  createdAt: bigint;
  modelFingerprint: string;
  quant: Quant;
  dim: number;
  vectors: VectorSection;
  records: CoinRecord[];
  bytes?: Uint8Array;
}

/** An immutable, validated pack. Make one with {@link readPack} or {@link applyDelta}. */
export class Pack {
  readonly catalogId: string;
  readonly catalogVersion: number;
  /** Unix seconds, UTC (i64 in the file; {@link createdAtBig} is exact). */
  readonly createdAt: number;
  readonly createdAtBig: bigint;
  readonly modelFingerprint: string;
  readonly quant: Quant;
  readonly dim: number;
  readonly metric = "cosine";
  readonly coinOrder: readonly string[];
  private readonly recordList: readonly CoinRecord[];
  private readonly recordMap: ReadonlyMap<string, CoinRecord>;
  private readonly v: VectorSection;
  private readonly starts: Int32Array;
  private readonly stops: Int32Array;
  private readonly invNorm: Float32Array;
  private bytesCache: Uint8Array | undefined;
  private shaCache: string | undefined;

  /** @internal use readPack / applyDelta */
  constructor(init: PackInit) {
    this.catalogId = init.catalogId;
    this.catalogVersion = init.catalogVersion;
    this.createdAtBig = init.createdAt;
    this.createdAt = Number(init.createdAt);
    this.modelFingerprint = init.modelFingerprint;
    this.quant = init.quant;
    this.dim = init.dim;
    this.v = init.vectors;
    this.recordList = Object.freeze(init.records.slice());
    const name = `pack ${JSON.stringify(this.catalogId)} v${this.catalogVersion}`;
    if (!this.catalogId || !this.modelFingerprint) throw new PackFormatError(`${name}: empty catalog id or model fingerprint; ${FIX_BUILD}`);
    const rawIds = this.recordList.map((r) => utf8(r.coinId));
    for (let i = 1; i < rawIds.length; i++) {
      if (compareBytes(rawIds[i]!, rawIds[i - 1]!) <= 0) {
        throw new PackFormatError(`${name}: coin table is not sorted by coin id or has duplicates; ${FIX_BUILD}`);
      }
    }
    const ivf = this.v.ivf ?? null;
    if ((this.quant === "ivfpq") !== (ivf !== null)) {
      throw new PackFormatError(`${name}: quant ${JSON.stringify(this.quant)} does not match the presence of an ivfpq index`);
    }
    const problem = ivf
      ? ivfProblem(this.v, ivf, this.recordList.length, this.dim)
      : arrayProblem(this.v, this.recordList.length, this.dim, this.quant);
    if (problem) throw new PackFormatError(`${name}: ${problem}; ${FIX_BUILD}`);
    this.coinOrder = Object.freeze(this.recordList.map((r) => r.coinId));
    this.recordMap = new Map(this.recordList.map((r) => [r.coinId, r]));
    const c = this.recordList.length;
    this.starts = new Int32Array(c);
    this.stops = new Int32Array(c);
    const n = this.v.coinIndex.length;
    for (let i = 0; i < n; i++) {
      const k = this.v.coinIndex[i]!;
      if (i === 0 || k !== this.v.coinIndex[i - 1]) this.starts[k] = i;
      this.stops[k] = i + 1;
    }
    this.invNorm = new Float32Array(n);
    const d = this.dim;
    if (ivf) {
      // ‖x_i‖ of the dequantised vectors (float64 of the float32 decode), once per vector, without an N x dim copy.
      const lists = listOfVectors(ivf, n);
      const row = new Float32Array(d);
      for (let i = 0; i < n; i++) {
        decodeIvf(ivf, this.v.data, d, i, lists[i]!, row);
        let ss = 0;
        for (let j = 0; j < d; j++) ss += row[j]! * row[j]!;
        const norm = Math.sqrt(ss);
        if (!(norm > 0)) {
          throw new PackFormatError(
            `pack ${JSON.stringify(this.catalogId)}: an ivfpq vector decodes to all zeros (cosine undefined); ${FIX_BUILD}`,
          );
        }
        this.invNorm[i] = 1 / norm;
      }
    } else {
      for (let i = 0; i < n; i++) {
        let ss = 0;
        for (let j = i * d; j < (i + 1) * d; j++) ss += this.v.data[j]! * this.v.data[j]!;
        this.invNorm[i] = 1 / Math.sqrt(ss);
      }
    }
    this.bytesCache = init.bytes;
  }

  get vectorCount(): number {
    return this.v.coinIndex.length;
  }

  get coinCount(): number {
    return this.recordList.length;
  }

  /**
   * Bytes of the vector section: vectors + per-vector coin index (+ int8 scale; + the ivfpq index); the coin table
   * excluded.
   */
  get vectorBytes(): number {
    const ivf = this.v.ivf;
    if (ivf) return ivfSectionBytes(this.vectorCount, this.dim, ivf.lists, ivf.subspaces);
    return vectorBytes(this.vectorCount, this.dim, this.quant);
  }

  /** The ivfpq index (lists, nprobe, sub-spaces, offsets, centroids, codebooks); null for other encodings. */
  get ivf(): IvfIndex | null {
    return this.v.ivf ?? null;
  }

  /** `{coinId: CoinRecord}` in coin id order. */
  get records(): ReadonlyMap<string, CoinRecord> {
    return this.recordMap;
  }

  /** The coin id of every vector, in vector order. */
  get coinIds(): string[] {
    return Array.from(this.v.coinIndex, (i) => this.coinOrder[i]!);
  }

  /** int8 scales per vector (null for fp16/fp32). */
  get scales(): Float32Array | null {
    return this.v.scales ? this.v.scales.slice() : null;
  }

  /**
   * Dequantised `N x dim` float32, row-major: int8 `code * scale`, fp16 widened, fp32 as stored, ivfpq
   * `centroid + residual` (in the pack's vector order: list by list).
   */
  vectorsF32(): Float32Array {
    const ivf = this.v.ivf;
    if (ivf) {
      const n = this.vectorCount;
      const d = this.dim;
      const out = new Float32Array(n * d);
      const lists = listOfVectors(ivf, n);
      for (let i = 0; i < n; i++) decodeIvf(ivf, this.v.data, d, i, lists[i]!, out.subarray(i * d, (i + 1) * d));
      return out;
    }
    const out = new Float32Array(this.v.data.length);
    const s = this.v.scales;
    for (let i = 0; i < out.length; i++) {
      out[i] = s ? Math.fround(this.v.data[i]! * s[Math.floor(i / this.dim)]!) : this.v.data[i]!;
    }
    return out;
  }

  /** Dequantised vectors of one coin, `n x dim`. */
  vectorsOf(coinId: string): Float32Array {
    const i = this.coinOrder.indexOf(coinId);
    if (i < 0) throw new PackQueryError(`coin ${JSON.stringify(coinId)} is not in pack ${JSON.stringify(this.catalogId)}`);
    if (this.v.ivf) {
      // ivfpq: a coin's vectors may sit in several lists
      const all = this.vectorsF32();
      const d = this.dim;
      const rows: number[] = [];
      this.v.coinIndex.forEach((c, r) => c === i && rows.push(r));
      const out = new Float32Array(rows.length * d);
      rows.forEach((r, k) => out.set(all.subarray(r * d, (r + 1) * d), k * d));
      return out;
    }
    return this.vectorsF32().subarray(this.starts[i]! * this.dim, this.stops[i]! * this.dim);
  }

  /** Hex sha256 of {@link toBytes}. */
  get sha256(): string {
    if (this.shaCache === undefined) this.shaCache = toHex(sha256(this.toBytes()));
    return this.shaCache;
  }

  private unitQuery(query: ArrayLike<number>): Float64Array {
    if (!query || typeof query.length !== "number" || query.length !== this.dim) {
      throw new PackDimError(
        `query has ${query?.length ?? "no"} values but pack ${JSON.stringify(this.catalogId)} holds ${this.dim}-d vectors of model ${this.modelFingerprint}: pass a (${this.dim},) embedding from that model`,
      );
    }
    const q = Float64Array.from(query as ArrayLike<number>);
    if (!q.every((x) => Number.isFinite(x))) throw new PackQueryError("query holds NaN or infinity; check the embedder output");
    let ss = 0;
    for (const x of q) ss += x * x;
    if (ss === 0) throw new PackQueryError("query is all zeros: cosine is undefined; check the embedder output");
    const norm = Math.sqrt(ss);
    return q.map((x) => x / norm);
  }

  /**
   * Max cosine per coin (float32 arithmetic as the reference), in coin order. ivfpq: only coins with a vector in
   * the probed lists get a score; the others are `-Infinity`.
   */
  coinScores(query: ArrayLike<number>): Float32Array {
    const q64 = this.unitQuery(query);
    if (this.v.ivf) {
      const scores = new Float32Array(this.coinCount).fill(-Infinity);
      const { coins, best } = this.ivfCandidates(this.v.ivf, q64, false);
      coins.forEach((c, i) => { scores[c] = best[i]!; });
      return scores;
    }
    const q = Float32Array.from(q64);
    const d = this.dim;
    const scores = new Float32Array(this.coinCount).fill(-Infinity);
    const data = this.v.data;
    for (let i = 0; i < this.vectorCount; i++) {
      let dot = 0;
      const base = i * d;
      for (let j = 0; j < d; j++) dot += q[j]! * data[base + j]!;
      const s = Math.fround(Math.fround(dot) * this.invNorm[i]!);
      const c = this.v.coinIndex[i]!;
      if (s > scores[c]!) scores[c] = s;
    }
    return scores;
  }

  /**
   * Top-`k` coins `[coinId, cosine]` for one `dim` query, best first; a coin's score is the max cosine over its
   * vectors; equal scores keep coin-table order. `rescore`: the shortlist (`k + 16` coins) is re-scored in float64.
   */
  search(query: ArrayLike<number>, k = 5, options: { rescore?: boolean } = {}): SearchHit[] {
    if (!Number.isInteger(k) || k < 0) throw new PackQueryError(`k=${k}: pass the number of coins wanted (an integer >= 1)`);
    const q64 = this.unitQuery(query);
    if (this.vectorCount === 0 || k === 0) return [];
    if (this.v.ivf) return this.searchIvf(this.v.ivf, q64, k, options.rescore === true);
    const scores = this.coinScores(q64);
    const order = Array.from(scores.keys()).sort((a, b) => scores[b]! - scores[a]! || a - b);
    if (!options.rescore) return order.slice(0, k).map((i) => [this.coinOrder[i]!, scores[i]!] as const);
    const shortlist = order.slice(0, k + RESCORE_EXTRA);
    const rescored = shortlist.map((c) => {
      let best = -Infinity;
      for (let i = this.starts[c]!; i < this.stops[c]!; i++) {
        let dot = 0;
        let ss = 0;
        for (let j = 0; j < this.dim; j++) {
          const x = this.v.data[i * this.dim + j]!;
          dot += x * q64[j]!;
          ss += x * x;
        }
        best = Math.max(best, dot / Math.sqrt(ss));
      }
      return [c, best] as const;
    });
    rescored.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
    return rescored.slice(0, k).map(([c, s]) => [this.coinOrder[c]!, s] as const);
  }

  /**
   * The `nprobe` lists (the pack's own `nprobe`, docs/PACK_FORMAT.md 8.3) nearest a unit float32 query, ranked by
   * `u . c_l - |c_l|^2 / 2` (ties: lower list first), and `u . c_l` of every list (float32).
   */
  private probedLists(ivf: IvfIndex, u: Float32Array): { probe: number[]; coarse: Float32Array } {
    const d = this.dim;
    const coarse = new Float32Array(ivf.lists);
    const rank = new Float32Array(ivf.lists);
    for (let l = 0; l < ivf.lists; l++) {
      let dot = 0;
      let sq = 0;
      for (let t = 0; t < d; t++) {
        const c = ivf.centroids[l * d + t]!;
        dot += c * u[t]!;
        sq += c * c;
      }
      coarse[l] = dot;
      rank[l] = Math.fround(coarse[l]! - Math.fround(0.5 * Math.fround(sq)));
    }
    const order = Array.from(rank.keys()).sort((a, b) => {
      const ra = rank[a]!;
      const rb = rank[b]!;
      if (Number.isNaN(ra) || Number.isNaN(rb)) return Number.isNaN(ra) === Number.isNaN(rb) ? a - b : Number.isNaN(ra) ? 1 : -1;
      return rb - ra || a - b;
    });
    return { probe: order.slice(0, ivf.nprobe), coarse };
  }

  /**
   * Candidate coins of an ivfpq search and their best score over the vectors of the probed lists (docs/PACK_FORMAT.md
   * 8.3): float32 lookup tables as the reference, or (`rescore`) float64 cosines of the dequantised vectors.
   */
  private ivfCandidates(ivf: IvfIndex, q64: Float64Array, rescore: boolean): { coins: number[]; best: number[] } {
    const d = this.dim;
    const m = ivf.subspaces;
    const dsub = d / m;
    const u = Float32Array.from(q64);
    const { probe, coarse } = this.probedLists(ivf, u);
    // T[j][k] = u_j . B[j][k], float32
    const table = new Float32Array(m * IVF_CODEBOOK_SIZE);
    for (let j = 0; j < m; j++) {
      for (let k = 0; k < IVF_CODEBOOK_SIZE; k++) {
        const entry = (j * IVF_CODEBOOK_SIZE + k) * dsub;
        let s = 0;
        for (let t = 0; t < dsub; t++) s = Math.fround(s + Math.fround(u[j * dsub + t]! * ivf.codebooks[entry + t]!));
        table[j * IVF_CODEBOOK_SIZE + k] = s;
      }
    }
    const codes = this.v.data;
    const best = new Map<number, number>();
    const row = new Float32Array(d);
    for (const l of probe) {
      for (let i = ivf.offsets[l]!; i < ivf.offsets[l + 1]!; i++) {
        let s: number;
        if (rescore) {
          decodeIvf(ivf, codes, d, i, l, row);
          let dot = 0;
          let ss = 0;
          for (let t = 0; t < d; t++) {
            dot += row[t]! * q64[t]!;
            ss += row[t]! * row[t]!;
          }
          s = dot / Math.sqrt(ss);
        } else {
          s = coarse[l]!;
          for (let j = 0; j < m; j++) s = Math.fround(s + table[j * IVF_CODEBOOK_SIZE + codes[i * m + j]!]!);
          s = Math.fround(s * this.invNorm[i]!);
        }
        const c = this.v.coinIndex[i]!;
        const prev = best.get(c);
        // the max score per coin; NaN only when all of the coin's scores are NaN (as the reference's sort)
        if (prev === undefined || s > prev || (Number.isNaN(prev) && !Number.isNaN(s))) best.set(c, s);
      }
    }
    const coins = [...best.keys()].sort((a, b) => a - b);
    return { coins, best: coins.map((c) => best.get(c)!) };
  }

  /** ivfpq search (docs/PACK_FORMAT.md 8.3): only coins with a vector in the probed lists are candidates. */
  private searchIvf(ivf: IvfIndex, q64: Float64Array, k: number, rescore: boolean): SearchHit[] {
    const { coins, best } = this.ivfCandidates(ivf, q64, rescore);
    const order = Array.from(coins.keys()).sort((a, b) => {
      const sa = best[a]!;
      const sb = best[b]!;
      if (Number.isNaN(sa) || Number.isNaN(sb)) {
        return Number.isNaN(sa) === Number.isNaN(sb) ? coins[a]! - coins[b]! : Number.isNaN(sa) ? 1 : -1;
      }
      return sb - sa || coins[a]! - coins[b]!;
    });
    return order.slice(0, k).map((i) => [this.coinOrder[coins[i]!]!, best[i]!] as const);
  }

  /** @internal the raw stored bytes of vector i (codes or floats). */
  rawVector(i: number): Uint8Array {
    const w = this.v.ivf ? this.v.ivf.subspaces : this.dim * QUANT_WIDTH[this.quant];
    return this.v.raw.subarray(i * w, (i + 1) * w);
  }

  /** @internal */
  vectorRange(coin: number): [number, number] {
    return [this.starts[coin]!, this.stops[coin]!];
  }

  /** @internal */
  get section(): VectorSection {
    return this.v;
  }

  recordAt(i: number): CoinRecord {
    return this.recordList[i]!;
  }

  /** The canonical bytes of this pack (`readPack(p.toBytes())` equals `p`). */
  toBytes(): Uint8Array {
    if (!this.bytesCache) {
      const table = concatBytes([
        str16(this.catalogId, "catalog id"), str16(this.modelFingerprint, "model fingerprint"),
        ...this.recordList.map(recordBytes),
      ]);
      const header = new Uint8Array(HEADER_BYTES);
      const hv = new DataView(header.buffer);
      header.set(utf8(PACK_MAGIC), 0);
      hv.setUint16(4, FORMAT_VERSION, true);
      hv.setUint8(6, QUANT_CODE[this.quant]);
      hv.setUint8(7, 1);
      hv.setUint16(8, this.dim, true);
      hv.setUint32(12, this.vectorCount, true);
      hv.setUint32(16, this.coinCount, true);
      hv.setUint32(20, this.catalogVersion, true);
      hv.setBigInt64(24, this.createdAtBig, true);
      hv.setUint32(32, table.length, true);
      this.bytesCache = seal(concatBytes([header, sectionBytes(this.v), table]));
    }
    return this.bytesCache;
  }
}

function sectionBytes(v: VectorSection): Uint8Array {
  const n = v.coinIndex.length;
  const ivf = v.ivf;
  if (ivf) {
    const floats = ivf.centroids.length + ivf.codebooks.length;
    const head = new Uint8Array(IVF_INDEX_HEADER_BYTES + 4 * (ivf.lists + 1) + 4 * floats + 4 * n);
    const view = new DataView(head.buffer);
    view.setUint16(0, ivf.lists, true);
    view.setUint16(2, ivf.nprobe, true);
    view.setUint16(4, ivf.subspaces, true);
    view.setUint16(6, IVF_CODE_BITS, true);
    let pos = IVF_INDEX_HEADER_BYTES;
    for (const o of ivf.offsets) { view.setUint32(pos, o, true); pos += 4; }
    for (const x of ivf.centroids) { view.setFloat32(pos, x, true); pos += 4; }
    for (const x of ivf.codebooks) { view.setFloat32(pos, x, true); pos += 4; }
    for (const c of v.coinIndex) { view.setUint32(pos, c, true); pos += 4; }
    return concatBytes([head, v.raw]);
  }
  const head = new Uint8Array(n * (v.scales ? 8 : 4));
  const view = new DataView(head.buffer);
  for (let i = 0; i < n; i++) view.setUint32(4 * i, v.coinIndex[i]!, true);
  if (v.scales) for (let i = 0; i < n; i++) view.setFloat32(4 * n + 4 * i, v.scales[i]!, true);
  return concatBytes([head, v.raw]);
}

function wrapUnexpected(e: unknown, name: string): never {
  if (e instanceof PackError) throw e;
  throw new PackFormatError(`${name}: malformed (${(e as Error)?.message ?? e}); ${FIX_BUILD}`, { cause: e });
}

function asBytes(source: Uint8Array | ArrayBuffer, kind: string): Uint8Array {
  if (source instanceof Uint8Array) return source;
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  throw new PackFormatError(`cannot read a ${kind} from ${Object.prototype.toString.call(source)}; pass a Uint8Array`);
}

/**
 * Parse and verify a pack. Raises PackError subclasses only. Check order: magic, format version, length against
 * the header, sha256, then every field. With `expectedFingerprint` / `expectedDim` it also refuses a pack of
 * another embedder.
 */
export function readPack(
  source: Uint8Array | ArrayBuffer,
  options: { expectedFingerprint?: string; expectedDim?: number; name?: string } = {},
): Pack {
  const name = options.name ?? "pack";
  const buf = asBytes(source, "pack");
  let pack: Pack;
  try {
    pack = parsePack(buf, name);
  } catch (e) {
    wrapUnexpected(e, name);
  }
  if (options.expectedFingerprint !== undefined) checkFingerprint(pack, options.expectedFingerprint);
  if (options.expectedDim !== undefined) checkDim(pack, options.expectedDim);
  return pack;
}

function parsePack(buf: Uint8Array, name: string): Pack {
  checkEnvelope(buf, PACK_MAGIC, "pack", name);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const { quant, dim } = decodeHeaderCodes(view, name);
  checkReserved(view, 10, 36, name);
  const n = view.getUint32(12, true);
  const coins = view.getUint32(16, true);
  const version = view.getUint32(20, true);
  const createdAt = view.getBigInt64(24, true);
  const tableBytes = view.getUint32(32, true);
  const ivfShape = quant === "ivfpq" ? readIvfHeader(buf, view, dim, name) : null;
  const vb = ivfShape ? ivfSectionBytes(n, dim, ivfShape[0], ivfShape[2]) : vectorBytes(n, dim, quant);
  const expected = HEADER_BYTES + vb + tableBytes + CHECKSUM_BYTES;
  checkLengthAndChecksum(buf, expected, name);
  if (coins > n || coins * MIN_RECORD_BYTES > tableBytes) {
    throw new PackFormatError(`${name}: header claims ${coins} coins for ${n} vectors and a ${tableBytes}-byte table; ${FIX_BUILD}`);
  }
  const vectors = ivfShape
    ? readIvfSection(buf, n, dim, ivfShape[0], ivfShape[1], ivfShape[2])
    : readVectors(buf, n, dim, quant);
  const cur = new Cursor(buf, HEADER_BYTES + vb, expected - CHECKSUM_BYTES, `${name} table`);
  const catalogId = cur.text("catalog id")[0];
  const fingerprint = cur.text("model fingerprint")[0];
  const records: CoinRecord[] = [];
  for (let i = 0; i < coins; i++) records.push(cur.record());
  cur.finish();
  return new Pack({
    catalogId, catalogVersion: version, createdAt, modelFingerprint: fingerprint, quant, dim, vectors, records,
    bytes: buf.slice(),
  });
}

/** Refuse a pack whose vectors were made by another embedder (not comparable with this one's). */
export function checkFingerprint(pack: Pack, expected: string): void {
  if (pack.modelFingerprint !== expected) {
    throw new PackFingerprintError(
      `pack ${JSON.stringify(pack.catalogId)} v${pack.catalogVersion} was embedded by model ${pack.modelFingerprint}, but the embedder in use is ${expected}: embeddings of different models are not comparable; rebuild the pack with this model (coinvision pack build) or sync the catalog for this model`,
    );
  }
}

export function checkDim(pack: Pack, expected: number): void {
  if (pack.dim !== expected) {
    throw new PackDimError(
      `pack ${JSON.stringify(pack.catalogId)} holds ${pack.dim}-d vectors but the embedder outputs ${expected}-d ones; use a pack built with this embedder`,
    );
  }
}

// ------------------------------------------------------------------------------------------------ deltas

/** A parsed delta: what changed from `baseVersion` to `newVersion` of one catalog. */
export interface Delta {
  readonly catalogId: string;
  readonly modelFingerprint: string;
  readonly quant: Quant;
  readonly dim: number;
  readonly baseVersion: number;
  readonly newVersion: number;
  readonly newCreatedAt: bigint;
  readonly baseSha256: string;
  readonly newSha256: string;
  readonly removed: readonly string[];
  readonly upserts: readonly CoinRecord[];
  /** @internal */
  readonly vectors: VectorSection;
}

/** Parse and verify a delta pack (structure and sha256; {@link applyDelta} checks it fits the base). */
export function readDelta(source: Uint8Array | ArrayBuffer, options: { name?: string } = {}): Delta {
  const name = options.name ?? "delta";
  const buf = asBytes(source, "delta");
  try {
    return parseDelta(buf, name);
  } catch (e) {
    wrapUnexpected(e, name);
  }
}

function sortedUnique(raw: Uint8Array[]): boolean {
  for (let i = 1; i < raw.length; i++) if (compareBytes(raw[i]!, raw[i - 1]!) <= 0) return false;
  return true;
}

function parseDelta(buf: Uint8Array, name: string): Delta {
  checkEnvelope(buf, DELTA_MAGIC, "delta", name);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const { quant, dim } = decodeHeaderCodes(view, name);
  checkReserved(view, 10, 44, name);
  if (quant === "ivfpq") {
    throw new PackFormatError(
      `${name}: declares ivfpq vectors, which deltas never carry (ivfpq packs ship whole); download the full pack`,
    );
  }
  const n = view.getUint32(12, true);
  const nUpserts = view.getUint32(16, true);
  const nRemoved = view.getUint32(20, true);
  const createdAt = view.getBigInt64(24, true);
  const tableBytes = view.getUint32(32, true);
  const baseVersion = view.getUint32(36, true);
  const newVersion = view.getUint32(40, true);
  const vb = vectorBytes(n, dim, quant);
  const expected = HEADER_BYTES + vb + tableBytes + CHECKSUM_BYTES;
  checkLengthAndChecksum(buf, expected, name);
  if (nUpserts > n || nUpserts * MIN_RECORD_BYTES + nRemoved * 2 + 4 + 2 * CHECKSUM_BYTES > tableBytes) {
    throw new PackFormatError(`${name}: header counts do not fit its table; download it again`);
  }
  if (newVersion <= baseVersion) {
    throw new PackFormatError(`${name}: goes from v${baseVersion} to v${newVersion}, not forward; download it again`);
  }
  const vectors = readVectors(buf, n, dim, quant);
  const cur = new Cursor(buf, HEADER_BYTES + vb, expected - CHECKSUM_BYTES, `${name} table`);
  const catalogId = cur.text("catalog id")[0];
  const fingerprint = cur.text("model fingerprint")[0];
  const baseSha = toHex(cur.take(CHECKSUM_BYTES, "base sha256"));
  const newSha = toHex(cur.take(CHECKSUM_BYTES, "new sha256"));
  const removedRaw: Uint8Array[] = [];
  const removed: string[] = [];
  for (let i = 0; i < nRemoved; i++) {
    const [t, raw] = cur.text("removed coin id");
    removed.push(t);
    removedRaw.push(raw);
  }
  const upserts: CoinRecord[] = [];
  for (let i = 0; i < nUpserts; i++) upserts.push(cur.record());
  cur.finish();
  if (!catalogId || !fingerprint) throw new PackFormatError(`${name}: empty catalog id or model fingerprint; download it again`);
  if (!sortedUnique(removedRaw) || removed.includes("")) {
    throw new PackFormatError(`${name}: removed coin ids are not sorted, unique and non-empty; download it again`);
  }
  const removedSet = new Set(removed);
  if (!sortedUnique(upserts.map((r) => utf8(r.coinId))) || upserts.some((r) => removedSet.has(r.coinId))) {
    throw new PackFormatError(`${name}: changed coins are not sorted and unique, or also removed; download it again`);
  }
  const problem = arrayProblem(vectors, nUpserts, dim, quant);
  if (problem) throw new PackFormatError(`${name}: ${problem}; download it again`);
  return {
    catalogId, modelFingerprint: fingerprint, quant, dim, baseVersion, newVersion, newCreatedAt: createdAt,
    baseSha256: baseSha, newSha256: newSha, removed, upserts, vectors,
  };
}

/**
 * The new pack: `base` with the delta's removed coins dropped and its changed coins replaced. Refuses
 * (PackDeltaError, PackFingerprintError) a delta made for another catalog, model, base version or base content;
 * the result is verified against the new pack's sha256 carried in the delta.
 */
export function applyDelta(base: Pack, delta: Uint8Array | ArrayBuffer | Delta): Pack {
  const d = delta instanceof Uint8Array || delta instanceof ArrayBuffer ? readDelta(delta) : delta;
  if (base.quant === "ivfpq") {
    throw new PackDeltaError(
      `pack ${JSON.stringify(base.catalogId)} is ivfpq: its versions ship as full packs, not deltas; download the full pack`,
    );
  }
  if (d.catalogId !== base.catalogId) {
    throw new PackDeltaError(`delta is for catalog ${JSON.stringify(d.catalogId)}, not ${JSON.stringify(base.catalogId)}; use that catalog's delta`);
  }
  if (d.modelFingerprint !== base.modelFingerprint) {
    throw new PackFingerprintError(
      `delta carries vectors of model ${d.modelFingerprint} but the base pack is from model ${base.modelFingerprint}; download the full pack`,
    );
  }
  if (d.baseVersion !== base.catalogVersion) {
    throw new PackDeltaError(
      `delta goes from v${d.baseVersion} to v${d.newVersion} but the base pack is v${base.catalogVersion}; apply deltas in order or download the full pack`,
    );
  }
  if (d.newVersion <= base.catalogVersion) {
    throw new PackDeltaError(`delta would move v${base.catalogVersion} to v${d.newVersion}: not forward`);
  }
  if (d.quant !== base.quant || d.dim !== base.dim) {
    throw new PackDeltaError(`delta holds ${d.quant}/${d.dim}-d vectors but the base pack ${base.quant}/${base.dim}-d; download the full pack`);
  }
  if (base.sha256 !== d.baseSha256) {
    throw new PackDeltaError(
      `base pack v${base.catalogVersion} differs from the one the delta was made from (sha256 ${base.sha256.slice(0, 16)}… vs ${d.baseSha256.slice(0, 16)}…); download the full pack`,
    );
  }
  try {
    return merge(base, d);
  } catch (e) {
    if (e instanceof PackError) throw e;
    throw new PackDeltaError(`delta does not apply (${(e as Error)?.message ?? e}); download the full pack`, { cause: e });
  }
}

function merge(base: Pack, d: Delta): Pack {
  const upIds = new Set(d.upserts.map((r) => r.coinId));
  const baseIds = new Set(base.coinOrder);
  const missing = d.removed.filter((c) => !baseIds.has(c)).sort(compareCodePointsLocal);
  if (missing.length) {
    throw new PackDeltaError(`delta removes coins ${JSON.stringify(missing.slice(0, 5))} that the base pack does not have; download the full pack`);
  }
  const dropped = new Set([...d.removed, ...upIds]);
  // (record, source, vector rows) per coin
  type Entry = { rec: CoinRecord; rows: Array<{ src: "base" | "delta"; i: number }> };
  const entries: Entry[] = [];
  base.coinOrder.forEach((cid, c) => {
    if (dropped.has(cid)) return;
    const [s, e] = base.vectorRange(c);
    entries.push({ rec: base.recordAt(c), rows: range(s, e).map((i) => ({ src: "base" as const, i })) });
  });
  const upEntries: Entry[] = d.upserts.map((rec) => ({ rec, rows: [] }));
  d.vectors.coinIndex.forEach((u, i) => {
    const entry = upEntries[u];
    if (!entry) throw new PackDeltaError(`delta vector ${i} names changed coin ${u}, which does not exist; download the full pack`);
    entry.rows.push({ src: "delta", i });
  });
  entries.push(...upEntries);
  entries.sort((a, b) => compareCodePointsLocal(a.rec.coinId, b.rec.coinId));
  const rows = entries.flatMap((e, c) => e.rows.map((r) => ({ ...r, c })));
  const n = rows.length;
  const width = base.dim * QUANT_WIDTH[base.quant];
  const coinIndex = new Uint32Array(n);
  const raw = new Uint8Array(n * width);
  const scales = base.quant === "int8" ? new Float32Array(n) : null;
  const data = base.quant === "int8" ? new Int8Array(n * base.dim) : new Float32Array(n * base.dim);
  rows.forEach((r, k) => {
    coinIndex[k] = r.c;
    const from = r.src === "base" ? base.section : d.vectors;
    raw.set(from.raw.subarray(r.i * width, (r.i + 1) * width), k * width);
    data.set(from.data.subarray(r.i * base.dim, (r.i + 1) * base.dim), k * base.dim);
    if (scales && from.scales) scales[k] = from.scales[r.i]!;
  });
  let pack: Pack;
  try {
    pack = new Pack({
      catalogId: base.catalogId, catalogVersion: d.newVersion, createdAt: d.newCreatedAt,
      modelFingerprint: base.modelFingerprint, quant: base.quant, dim: base.dim,
      vectors: { coinIndex, scales, data, raw }, records: entries.map((e) => e.rec),
    });
  } catch (e) {
    if (e instanceof PackFormatError) {
      throw new PackDeltaError(`delta v${d.baseVersion}->v${d.newVersion} yields an invalid pack (${e.message}); download the full pack`, { cause: e });
    }
    throw e;
  }
  if (pack.sha256 !== d.newSha256) {
    throw new PackDeltaError(
      `pack rebuilt from delta v${d.baseVersion}->v${d.newVersion} does not match the published pack's sha256; download the full pack`,
    );
  }
  return pack;
}

function range(s: number, e: number): number[] {
  return Array.from({ length: e - s }, (_, i) => s + i);
}

function compareCodePointsLocal(a: string, b: string): number {
  return compareBytes(utf8(a), utf8(b));
}
