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

  for (const name of ["int8.pack", "fp16.pack", "fp32.pack", "int8_v1_to_v2.delta"]) {
    it(`${name}: 3000 mutations (bit flips, byte sets, truncations, insertions; sealed and resealed) raise only PackError`, () => {
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
        try {
          const p = read(b);
          assert.ok(p instanceof Pack);
        } catch (e) {
          if (!(e instanceof errors.PackError)) throw new Error(`mutation ${t} (kind ${kind}) raised ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
          refused++;
        }
      }
      assert.ok(refused > 2500, `${refused} refused`);
    });
  }
});
