/**
 * The whole pipeline on the release ONNX models against the Python reference's outputs of every stage
 * (test/fixtures/pipeline, made by scripts/make_fixtures.py with the Python SDK on ONNX Runtime). Later stages start
 * from the reference's own input of that stage (its decoded PNG), so a JPEG decoder difference cannot hide a
 * pipeline bug; the end-to-end run from the JPEG bytes measures what the decoder difference costs.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { PNG } from "pngjs";

import type { ImageU8, Mask } from "../src/core/cv.js";
import { ImageError, PackFingerprintError, PackError } from "../src/core/errors.js";
import { loadImage } from "../src/core/images.js";
import { readPack } from "../src/core/pack.js";
import { coinCrop, letterbox } from "../src/core/preprocess.js";
import type { Recognizer } from "../src/core/recognizer.js";
import { NodeImageDecoder } from "../src/node/decoder.js";
import { recognizerFromDir } from "../src/node/models.js";
import { FIXTURES, MODELS, REPO, rankingMismatch, readJson } from "./helpers.js";

// End to end the photo is decoded by jpeg-js, not libjpeg-turbo: scores move by up to 0.061 with the crop kept to
// the mask's convex hull (measured on the 37 queries below; 0.041 with the exact mask, 0.024 before the output
// whitening, conformance.test.ts); every top-1 coin and unknown verdict stays the reference's.
const E2E_SCORE = 6.5e-2;

const PIPE = join(FIXTURES, "pipeline");
const expected = readJson(join(PIPE, "expected.json"));
const figures: Record<string, number | string> = {};

function png(path: string): ImageU8 {
  const p = PNG.sync.read(readFileSync(path));
  const rgb = new Uint8Array(p.width * p.height * 3);
  for (let i = 0; i < p.width * p.height; i++) for (let c = 0; c < 3; c++) rgb[i * 3 + c] = p.data[i * 4 + c]!;
  return { width: p.width, height: p.height, channels: 3, data: rgb };
}
function pngMask(path: string): Mask {
  const img = png(path);
  return { width: img.width, height: img.height, data: Uint8Array.from({ length: img.width * img.height }, (_, i) => (img.data[i * 3]! > 127 ? 1 : 0)) };
}
function f32(path: string): Float32Array {
  const b = readFileSync(path);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}
function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
function meanAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i]! - b[i]!);
  return s / a.length;
}
function iou(a: Mask, b: Mask): number {
  let i = 0, u = 0;
  for (let k = 0; k < a.data.length; k++) {
    i += a.data[k]! & b.data[k]!;
    u += a.data[k]! | b.data[k]!;
  }
  return u ? i / u : 1;
}
function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    d += a[i]! * b[i]!;
    na += a[i]! ** 2;
    nb += b[i]! ** 2;
  }
  return d / Math.sqrt(na * nb);
}
const bump = (k: string, v: number) => (figures[k] = Math.max(Number(figures[k] ?? 0), v));
const low = (k: string, v: number) => (figures[k] = Math.min(Number(figures[k] ?? 1), v));

let rec: Recognizer;
const decoder = new NodeImageDecoder();

describe("pipeline vs the Python reference (release ONNX models)", () => {
  before(async () => {
    rec = await recognizerFromDir(MODELS, { numThreads: 1, pack: join(PIPE, expected.pack) });
    assert.equal(rec.fingerprint, expected.embedder_fingerprint);
    assert.equal(rec.segmenterMeta.fingerprint, expected.segmenter_fingerprint);
    assert.equal(rec.unknownThreshold, expected.threshold);
    assert.equal(rec.pack!.sha256, expected.pack_sha256);
  });

  const detailed = expected.queries.filter((q: any) => q.files);
  for (const q of detailed) {
    it(`${q.name}: every stage from the reference's input of that stage`, async () => {
      const dir = join(PIPE, q.files);
      const decodedRef = png(join(dir, "decoded.png"));
      // 0. decode: jpeg-js vs Pillow (libjpeg-turbo)
      const decoded = await loadImage(new Uint8Array(readFileSync(join(REPO, q.path))), decoder);
      assert.deepEqual([decoded.height, decoded.width, 3], q.decoded.shape);
      bump("decode max |diff| (levels)", maxAbs(decoded.data, decodedRef.data));
      bump("decode mean |diff| (levels)", meanAbs(decoded.data, decodedRef.data));
      // jpeg-js and libjpeg-turbo differ (IDCT, chroma upsampling): measured max 26 levels, mean ~1 on the samples
      if (q.path.endsWith(".png")) assert.deepEqual(decoded.data, decodedRef.data); // lossless: identical
      else assert.ok(maxAbs(decoded.data, decodedRef.data) <= 40 && meanAbs(decoded.data, decodedRef.data) <= 2);
      // 1. letterbox
      const { square, box } = letterbox(decodedRef, rec.segmenter.params.sizePx);
      assert.deepEqual([box.scale, box.padX, box.padY], [q.letterbox.scale, q.letterbox.pad_x, q.letterbox.pad_y]);
      const lbDiff = maxAbs(square.data, png(join(dir, "letterbox.png")).data);
      bump("letterbox max |diff| (levels)", lbDiff);
      assert.ok(lbDiff <= 1, `letterbox ${lbDiff}`);
      // 2. segmenter logits of the reference's letterboxed input
      const logits = await rec.segmenter.logits(png(join(dir, "letterbox.png")));
      const lgDiff = maxAbs(logits, f32(join(dir, "logits1.f32")));
      bump("pass-1 logits max |diff|", lgDiff);
      assert.ok(lgDiff <= 1e-3, `logits ${lgDiff}`);
      // 2. two-pass segmentation with the touching-coin split
      const seg = await rec.segmenter.segment(decodedRef);
      assert.equal(seg.mask !== null, q.found);
      assert.equal(seg.tiled, q.tiled);
      if (q.found) {
        const i1 = iou(seg.firstPassMask!, pngMask(join(dir, "mask1.png")));
        const i2 = iou(seg.mask!, pngMask(join(dir, "mask.png")));
        low("mask IoU, pass 1 (min)", i1);
        low("mask IoU, final (min)", i2);
        assert.ok(i1 >= 0.99 && i2 >= 0.99, `IoU ${i1} ${i2}`);
        const bboxOff = Math.max(...seg.bbox!.map((v, k) => Math.abs(v - q.bbox[k])));
        bump("bbox max |diff| (px)", bboxOff);
        assert.ok(bboxOff <= 1, `bbox ${seg.bbox} vs ${q.bbox}`);
      }
      // 3. crop (from the reference mask, so only the crop is measured)
      const spec = rec.embedderMeta.input;
      const crop = coinCrop(decodedRef, q.found ? pngMask(join(dir, "mask.png")) : null, spec.sizePx, {
        marginFrac: rec.cropParams.cropMarginFrac, fillValue: spec.padValue, interpolation: rec.cropParams.interpolation,
        cropMask: rec.cropParams.cropMask,
      });
      const cropRef = png(join(dir, "crop.png"));
      const cDiff = maxAbs(crop.data, cropRef.data);
      bump("crop max |diff| (levels)", cDiff);
      assert.ok(cDiff <= 1, `crop ${cDiff}`);
      // 4. embedding of the reference crop
      const v = await rec.embedCrop(cropRef);
      const cos = cosine(v, q.embedding);
      low("embedding cosine vs reference, same crop (min)", cos);
      bump("embedding max |diff|, same crop", maxAbs(v, q.embedding));
      assert.ok(cos >= 0.9999, `cosine ${cos}`);
      // 0-5 from the reference's decoded pixels: the same answer
      const r = await rec.recognize(decodedRef, 5);
      low("embedding cosine, full pipeline from decoded pixels (min)", cosine(r.sides[0]!.vector, q.embedding));
      assert.deepEqual(r.matches.map((m) => m.coinId), q.top5.map((t: any) => t[0]));
      r.matches.forEach((m, k) => assert.ok(Math.abs(m.score - q.top5[k][1]) <= 1e-3));
      assert.equal(r.unknown, q.unknown);
    });
  }

  it("end to end from the photo files (jpeg-js decoding): top-1 and unknown verdict as the reference on every query", async () => {
    let top1 = 0, top5 = 0, unknown = 0, minCos = 1, maxDrift = 0;
    const differs: string[] = [];
    for (const q of expected.queries) {
      const r = await rec.recognize(new Uint8Array(readFileSync(join(REPO, q.path))), 5);
      minCos = Math.min(minCos, cosine(r.sides[0]!.vector, q.embedding));
      const refScore = new Map<string, number>(q.top5);
      for (const m of r.matches) {
        const ref = refScore.get(m.coinId);
        if (ref !== undefined) maxDrift = Math.max(maxDrift, Math.abs(m.score - ref));
      }
      // each score moves by at most E2E_SCORE, so two coins up to twice that apart in the reference may swap
      // (helpers.rankingMismatch)
      const mismatch = rankingMismatch(r.matches.slice(0, 1).map((m) => [m.coinId, m.score]), q.top5, 2 * E2E_SCORE);
      top1 += mismatch === null ? 1 : 0;
      top5 += JSON.stringify(r.matches.map((m) => m.coinId)) === JSON.stringify(q.top5.map((t: any) => t[0])) ? 1 : 0;
      // the verdict may flip only where the best score is within decoder noise of the threshold
      const nearThreshold = Math.abs(q.top5[0][1] - expected.threshold) <= E2E_SCORE;
      unknown += r.unknown === q.unknown || nearThreshold ? 1 : 0;
      if (mismatch !== null || r.unknown !== q.unknown) {
        differs.push(`${q.path}: ${r.matches[0]!.coinId} ${r.matches[0]!.score.toFixed(4)} unknown=${r.unknown}; ${mismatch}`);
      }
    }
    figures["end-to-end differences"] = differs.join(" | ");
    const n = expected.queries.length;
    figures["end-to-end top-1 agreement"] = `${top1}/${n}`;
    figures["end-to-end identical top-5 lists"] = `${top5}/${n}`;
    figures["end-to-end unknown agreement"] = `${unknown}/${n}`;
    figures["end-to-end embedding cosine (min)"] = minCos;
    figures["end-to-end score drift (max)"] = maxDrift;
    assert.ok(maxDrift <= E2E_SCORE, `score drift ${maxDrift}`);
    assert.equal(top1, n);
    assert.equal(unknown, n);
    // measured: 0.9695 with the output whitened (it lifts low-variance directions, and the decoder's noise with them);
    // 0.975 before (segmenter v3, 1 view of three backbones; 0.978 with 2 views of two; 0.983 with segmenter v2):
    // jpeg-js and libjpeg-turbo decode a level or two apart,
    // which moves the mask's edge; every stage from the reference's own decoded pixels is exact (tests above)
    assert.ok(minCos >= 0.965, `min cosine ${minCos}`);
  });

  it("recognizePair fuses both sides as the reference", async () => {
    for (const p of expected.pairs) {
      const r = await rec.recognizePair(new Uint8Array(readFileSync(join(REPO, p.obverse))), new Uint8Array(readFileSync(join(REPO, p.reverse))), 3);
      assert.deepEqual(r.matches.map((m) => m.coinId), p.top3.map((t: any) => t[0]));
      r.matches.forEach((m, k) => assert.ok(Math.abs(m.score - p.top3[k][1]) <= E2E_SCORE, `${m.score} vs ${p.top3[k][1]} (photos decoded by jpeg-js)`));
      assert.equal(r.unknown, p.unknown);
      assert.ok(r.timingsMs["obverse.embed"]! > 0 && r.timingsMs.total! > 0);
    }
  });

  it("refuses a pack of another model, garbage photos and bad arguments with typed errors", async () => {
    const golden = new Uint8Array(readFileSync(join(REPO, "tests/golden/packs/int8.pack")));
    const before = rec.pack;
    assert.throws(() => rec.loadPack(golden), PackFingerprintError);
    assert.equal(rec.pack, before); // the previous pack stays in use
    await assert.rejects(rec.recognize(new Uint8Array([1, 2, 3])), ImageError);
    await assert.rejects(rec.recognize(new Uint8Array(0)), ImageError);
    const jpeg = new Uint8Array(readFileSync(join(REPO, expected.queries[0].path)));
    await assert.rejects(rec.recognize(jpeg.subarray(0, 200)), ImageError);
    await assert.rejects(rec.recognize(jpeg, 0), (e: Error) => e.name === "ConfigError");
    assert.throws(() => readPack(jpeg), PackError);
  });

  it("reports the figures", () => {
    console.log(JSON.stringify(figures, null, 1));
  });
});

export { existsSync };
