/** The golden packs of tests/golden/packs (docs/PACK_FORMAT.md §6): every field, search, delta, broken files. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";

import { sha256Hex } from "../src/core/bytes.js";
import * as errors from "../src/core/errors.js";
import { applyDelta, Pack, readDelta, readPack } from "../src/core/pack.js";
import { GOLDEN_PACKS, readJson } from "./helpers.js";

const expected = readJson(join(GOLDEN_PACKS, "expected.json"));
const bytesOf = (name: string) => new Uint8Array(readFileSync(join(GOLDEN_PACKS, name)));

describe("golden packs", () => {
  for (const [name, want] of Object.entries<any>(expected.packs)) {
    it(`${name}: every header field, record, vector and int8 scale`, () => {
      const raw = bytesOf(name);
      assert.equal(raw.length, want.size_bytes);
      const pack = readPack(raw);
      const h = want.header;
      assert.deepEqual(
        [pack.catalogId, pack.catalogVersion, pack.createdAt, pack.dim, pack.quant, pack.metric, pack.vectorCount, pack.coinCount, pack.modelFingerprint],
        [h.catalog_id, h.catalog_version, h.created_at, h.dim, h.quant, h.metric, h.vector_count, h.coin_count, h.model_fingerprint],
      );
      assert.equal(pack.sha256, want.sha256);
      assert.deepEqual(pack.coinIds, want.vector_coin_ids);
      // dequantised vectors bit-exact as float32
      const flat = pack.vectorsF32();
      assert.deepEqual(Array.from(flat), want.vectors_dequantised.flat().map((x: number) => Math.fround(x)));
      if (want.int8_scales) assert.deepEqual(Array.from(pack.scales!), want.int8_scales.map((x: number) => Math.fround(x)));
      else assert.equal(pack.scales, null);
      const records = [...pack.records.values()].map((r) => ({
        coin_id: r.coinId, label: r.label, country: r.country, currency: r.currency, denomination: r.denomination,
        side: r.side, years: r.years, extra: { ...r.extra },
      }));
      assert.deepEqual(records, want.records);
      // canonical: re-serialising gives the same bytes, also when built from the parsed fields
      assert.deepEqual(pack.toBytes(), raw);
      const rebuilt = new Pack({
        catalogId: pack.catalogId, catalogVersion: pack.catalogVersion, createdAt: pack.createdAtBig,
        modelFingerprint: pack.modelFingerprint, quant: pack.quant, dim: pack.dim, vectors: pack.section,
        records: [...pack.records.values()],
      });
      assert.deepEqual(rebuilt.toBytes(), raw);
    });

    it(`${name}: top-${expected.top_k} of each golden query (ids, scores within ${expected.score_tolerance})`, () => {
      const pack = readPack(bytesOf(name));
      expected.queries.forEach((q: number[], i: number) => {
        for (const rescore of [false, true]) {
          const hits = pack.search(q, expected.top_k, { rescore });
          const want = want_(name)[i];
          assert.deepEqual(hits.map((h) => h[0]), want.map((w: any) => w[0]), `query ${i} rescore=${rescore}`);
          hits.forEach((h, j) => assert.ok(Math.abs(h[1] - want[j][1]) <= expected.score_tolerance, `query ${i}: ${h[1]} vs ${want[j][1]}`));
        }
      });
    });
  }
  const want_ = (name: string) => expected.packs[name].search;

  it("search edge cases: k larger than the coins, k = 0, bad queries are typed errors", () => {
    const pack = readPack(bytesOf("int8.pack"));
    assert.equal(pack.search(expected.queries[0], 100).length, pack.coinCount);
    assert.deepEqual(pack.search(expected.queries[0], 0), []);
    assert.throws(() => pack.search([1, 2, 3]), errors.PackDimError);
    assert.throws(() => pack.search(new Array(8).fill(0)), errors.PackQueryError);
    assert.throws(() => pack.search([NaN, 0, 0, 0, 0, 0, 0, 1]), errors.PackQueryError);
    assert.throws(() => pack.search(expected.queries[0], -1), errors.PackQueryError);
  });

  it("expected fingerprint and dim are enforced with both fingerprints named", () => {
    const raw = bytesOf("int8.pack");
    assert.throws(() => readPack(raw, { expectedFingerprint: "ffff" }), (e: Error) =>
      e instanceof errors.PackFingerprintError && e.message.includes("ffff") && e.message.includes("0123456789abcdef"));
    assert.throws(() => readPack(raw, { expectedDim: 64 }), errors.PackDimError);
  });
});

describe("golden delta", () => {
  for (const [name, want] of Object.entries<any>(expected.deltas)) {
    it(`${name} applied to ${want.base} gives ${want.result} byte for byte`, () => {
      const raw = bytesOf(name);
      assert.equal(raw.length, want.size_bytes);
      const d = readDelta(raw);
      assert.deepEqual(
        [d.baseVersion, d.newVersion, Number(d.newCreatedAt), d.baseSha256, d.newSha256, [...d.removed], d.upserts.map((r) => r.coinId), d.vectors.coinIndex.length],
        [want.base_version, want.new_version, want.new_created_at, want.base_sha256, want.new_sha256, want.removed, want.upserted, want.vector_count],
      );
      const result = applyDelta(readPack(bytesOf(want.base)), raw);
      assert.deepEqual(result.toBytes(), bytesOf(want.result));
      assert.equal(sha256Hex(result.toBytes()), want.new_sha256);
    });
  }

  it("a delta refuses the wrong base (version, content, catalog) with typed errors", () => {
    const delta = bytesOf("int8_v1_to_v2.delta");
    assert.throws(() => applyDelta(readPack(bytesOf("int8_v2.pack")), delta), errors.PackDeltaError);
    assert.throws(() => applyDelta(readPack(bytesOf("fp16.pack")), delta), errors.PackDeltaError);
    assert.throws(() => readPack(delta), errors.PackMagicError);
    assert.throws(() => readDelta(bytesOf("int8.pack")), errors.PackMagicError);
  });

  it("ivfpq packs have no deltas: applying one is PackDeltaError, a delta header with quant 4 is PackFormatError", () => {
    const delta = bytesOf("int8_v1_to_v2.delta");
    const ivf = readPack(bytesOf("ivfpq.pack"));
    assert.throws(() => applyDelta(ivf, delta), (e: any) => e.constructor === errors.PackDeltaError && /ivfpq/.test(e.message));
    assert.throws(() => applyDelta(ivf, readDelta(delta)), errors.PackDeltaError);
    const quant4 = delta.slice();
    quant4[6] = 4;
    quant4.set(Uint8Array.from(Buffer.from(sha256Hex(quant4.subarray(0, quant4.length - 32)), "hex")), quant4.length - 32);
    for (const read of [() => readDelta(quant4), () => applyDelta(readPack(bytesOf("int8.pack")), quant4)]) {
      assert.throws(read, (e: any) => e.constructor === errors.PackFormatError && /ivfpq/.test(e.message));
    }
  });
});

describe("ivfpq", () => {
  const resealed = (b: Uint8Array, edit: (v: DataView) => void) => {
    const out = b.slice();
    edit(new DataView(out.buffer));
    out.set(Uint8Array.from(Buffer.from(sha256Hex(out.subarray(0, out.length - 32)), "hex")), out.length - 32);
    return out;
  };

  it("index fields as expected.json; search scans the pack's own nprobe lists", () => {
    const want = expected.packs["ivfpq.pack"].ivfpq;
    const raw = bytesOf("ivfpq.pack");
    const pack = readPack(raw);
    const ivf = pack.ivf!;
    assert.deepEqual([ivf.lists, ivf.nprobe, ivf.subspaces], [want.list_count, want.nprobe, want.subspace_count]);
    assert.deepEqual(Array.from(ivf.offsets), want.list_offsets);
    assert.deepEqual(Array.from(ivf.centroids), want.centroids.flat().map((x: number) => Math.fround(x)));
    assert.deepEqual(Array.from(pack.section.data), want.codes.flat());
    assert.equal(pack.vectorBytes, 16 + 4 * 3 + 4 * 2 * 8 + 4 * 256 * 8 + 8 * (4 + 4));
    assert.equal(readPack(bytesOf("int8.pack")).ivf, null);
    // nprobe = list_count: every vector scored, so every coin is a candidate
    const all = readPack(resealed(raw, (v) => v.setUint16(66, 2, true)));
    assert.equal(all.ivf!.nprobe, 2);
    assert.equal(all.search(expected.queries[0], 3).length, 3);
    assert.equal(pack.search(expected.queries[0], 100).length, 2);
    // coinScores: candidates only
    const scores = pack.coinScores(expected.queries[0]);
    assert.deepEqual(Array.from(scores.map((s) => (s === -Infinity ? 0 : 1))), [1, 1, 0, 0, 0, 0]);
  });

  it("ivfpq header and section checks are typed errors in the reference order", () => {
    const raw = bytesOf("ivfpq.pack");
    const cases: Array<[string, (v: DataView) => void, Function]> = [
      ["list_count 0", (v) => v.setUint16(64, 0, true), errors.PackFormatError],
      ["nprobe 0", (v) => v.setUint16(66, 0, true), errors.PackFormatError],
      ["subspaces 0", (v) => v.setUint16(68, 0, true), errors.PackFormatError],
      ["code_bits 4", (v) => v.setUint16(70, 4, true), errors.PackFormatError],
      ["reserved", (v) => v.setUint8(79, 1), errors.PackFormatError],
      ["list_count 3 (size)", (v) => v.setUint16(64, 3, true), errors.PackTruncatedError],
      ["offsets decrease", (v) => v.setUint32(84, 9, true), errors.PackFormatError],
      ["centroid NaN", (v) => v.setFloat32(92, NaN, true), errors.PackFormatError],
      ["codebook inf", (v) => v.setFloat32(92 + 64, Infinity, true), errors.PackFormatError],
      ["coin index >= C", (v) => v.setUint32(92 + 64 + 8192, 6, true), errors.PackFormatError],
      ["coin order in a list", (v) => v.setUint32(92 + 64 + 8192, 1, true), errors.PackFormatError],
    ];
    for (const [what, edit, cls] of cases) {
      assert.throws(() => readPack(resealed(raw, edit)), (e: Error) => e.constructor === cls || assert.fail(`${what}: ${e.constructor.name} ${e.message}`));
    }
    assert.throws(() => readPack(raw.slice(0, 100)), errors.PackTruncatedError);
    // a coin's vectors may sit in several lists: moving list 0's boundary keeps the pack valid if order holds
    const twoLists = readPack(resealed(raw, (v) => v.setUint32(84, 2, true)));
    assert.deepEqual(twoLists.coinIds, expected.packs["ivfpq.pack"].vector_coin_ids);
    assert.deepEqual(twoLists.vectorsOf("de-2eur").length, 8);
  });
});

describe("broken packs", () => {
  for (const [name, want] of Object.entries<any>(expected.broken)) {
    it(`${name} (${want.how}) -> ${want.error}`, () => {
      const cls = (errors as any)[want.error];
      assert.ok(cls, want.error);
      assert.throws(() => readPack(bytesOf(name)), (e: Error) => {
        assert.equal(e.constructor.name, want.error, e.message);
        assert.ok(e instanceof cls && e instanceof errors.PackError);
        return true;
      });
    });
  }
});

describe("mutated packs (seeded fuzzing)", () => {
  // xorshift32: the same mutations on every run
  let seed = 0x9e3779b9;
  const rand = (n: number) => {
    seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
    return seed % n;
  };
  const reseal = (b: Uint8Array) => {
    const out = b.slice();
    const body = out.subarray(0, out.length - 32);
    out.set(new Uint8Array(require_sha(body)), out.length - 32);
    return out;
  };
  const require_sha = (b: Uint8Array) => Uint8Array.from(Buffer.from(sha256Hex(b), "hex"));

  // ivfpq.pack is mostly codebooks (8 KiB of floats): a resealed flip there is still a valid, canonical pack
  const minRefused: Record<string, number> = { "ivfpq.pack": 1500 };
  for (const name of ["int8.pack", "fp16.pack", "fp32.pack", "ivfpq.pack", "int8_v1_to_v2.delta"]) {
    it(`${name}: 3000 mutations (bit flips, byte sets, truncations, insertions; sealed and resealed) raise only PackError or read a canonical pack`, () => {
      const orig = bytesOf(name);
      const base = readPack(bytesOf("int8.pack"));
      const read = name.endsWith(".delta") ? (b: Uint8Array) => applyDelta(base, b) : (b: Uint8Array) => readPack(b);
      let refused = 0;
      for (let t = 0; t < 3000; t++) {
        let b = orig.slice();
        const kind = rand(5);
        if (kind === 0) b[rand(b.length)]! ^= 1 << rand(8);
        else if (kind === 1) b[rand(b.length)] = [0, 0xff, 0x7f, 0x80, 1][rand(5)]!;
        else if (kind === 2) b = b.slice(0, rand(b.length));
        else if (kind === 3) { const at = rand(b.length); b = Uint8Array.from([...b.slice(0, at), rand(256), ...b.slice(at)]); }
        else { const at = rand(b.length - 1); b = Uint8Array.from([...b.slice(0, at), ...b.slice(at + 1)]); }
        if (rand(2) && b.length > 96) b = reseal(b);
        let p: Pack;
        try {
          p = read(b);
          assert.ok(p instanceof Pack);
        } catch (e) {
          if (!(e instanceof errors.PackError)) throw new Error(`mutation ${t} (kind ${kind}) raised ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
          refused++;
          continue;
        }
        // accepted: canonical (re-serialises to the same bytes) and searchable
        if (!name.endsWith(".delta")) assert.deepEqual(p.toBytes(), b, `mutation ${t} (kind ${kind}) accepted but not canonical`);
        for (const q of expected.queries) assert.ok(p.search(q, 3, { rescore: t % 2 === 1 }).length <= 3);
      }
      assert.ok(refused > (minRefused[name] ?? 2500), `${refused} refused`);
    });
  }
});
