/** The OpenCV-equivalent image ops against cv2's own outputs on seeded inputs (test/fixtures/ops.json). */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";

import { connectedComponents, distanceTransform, resizeF32, resizeU8 } from "../src/core/cv.js";
import {
  coinCrop,
  convexHullFill,
  largestComponent,
  quarterTurnSource,
  rotationViews,
  splitTouchingCoins,
  tileBoxes,
  turnSquare,
  twoPassSegment,
  viewsProbability,
} from "../src/core/preprocess.js";
import { FIXTURES, readJson } from "./helpers.js";

const ops = readJson(join(FIXTURES, "ops.json"));

function arr(a: any): any {
  const buf = Buffer.from(a.b64, "base64");
  const bytes = new Uint8Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  if (a.dtype === "uint8") return bytes;
  if (a.dtype === "float32") return new Float32Array(bytes.buffer);
  if (a.dtype === "bool") return bytes;
  throw new Error(a.dtype);
}

function diffStats(a: ArrayLike<number>, b: ArrayLike<number>) {
  assert.equal(a.length, b.length);
  let max = 0, n = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (d > max) max = d;
    if (d > 0) n++;
  }
  return { max, n, frac: n / a.length };
}

export const report: Record<string, unknown> = {};

describe("cv.resize equals OpenCV", () => {
  for (const [i, c] of ops.resize.entries()) {
    for (const interp of ["bilinear", "area"] as const) {
      const [h, w] = c.src.shape;
      const [dh, dw] = c.dst[interp].shape;
      it(`${c.kind} ${interp} ${w}x${h} -> ${dw}x${dh} (#${i})`, () => {
        const want = arr(c.dst[interp]);
        if (c.kind.startsWith("u8")) {
          const got = resizeU8({ width: w, height: h, channels: 3, data: arr(c.src) }, dw, dh, interp);
          const s = diffStats(got.data, want);
          // uint8: OpenCV's SIMD fixed point reproduced; at most 1 level off (tiny images: up to 10% of the values)
          assert.ok(s.max <= 1 && s.frac <= (want.length < 1000 ? 0.1 : 0.01), JSON.stringify(s));
        } else {
          const got = resizeF32({ width: w, height: h, data: arr(c.src) }, dw, dh, interp);
          const s = diffStats(got.data, want);
          // cv2 takes Intel IPP's float32 bilinear, which differs from OpenCV's generic code (implemented here,
          // bit-exact with cv2.ipp.setUseIPP(False)) by ~1e-5 on N(0,1) values: 3e-5 allowed
          assert.ok(s.max <= 3e-5, JSON.stringify(s));
        }
      });
    }
  }
});

describe("components, distance transform, touching-coin split", () => {
  for (const [i, c] of ops.dist.entries()) {
    it(`distanceTransform L2/5 #${i}`, () => {
      const [h, w] = c.mask.shape;
      const got = distanceTransform({ width: w, height: h, data: arr(c.mask) });
      assert.ok(diffStats(got.data, arr(c.dist)).max <= 1e-6);
    });
  }
  for (const [i, c] of ops.components.entries()) {
    it(`connected components (8) and the largest #${i}`, () => {
      const [h, w] = c.mask.shape;
      const m = { width: w, height: h, data: arr(c.mask) };
      assert.equal(connectedComponents(m).count, c.count);
      const largest = largestComponent(m, 0);
      assert.deepEqual(Array.from(largest?.data ?? new Uint8Array(w * h)), Array.from(arr(c.largest)));
    });
  }
  const maskOps = [
    ["split", "splitTouchingCoins", "split_touching_coins", splitTouchingCoins],
    ["hull", "convexHullFill", "convex_hull_fill", convexHullFill],
  ] as const;
  for (const [key, name, reference, op] of maskOps) {
    for (const [i, c] of ops[key].entries()) {
      it(`${name} #${i} equals preprocess.${reference}`, () => {
        const [h, w] = c.mask.shape;
        const got = op({ width: w, height: h, data: arr(c.mask) });
        const s = diffStats(got.data, arr(c.out));
        assert.equal(s.n, 0, JSON.stringify(s));
      });
    }
  }
  it("coinCrop keeps the convex hull only when asked, and refuses an unknown crop_mask", () => {
    const c = ops.hull[0];
    const [h, w] = c.mask.shape;
    const image = { width: w, height: h, channels: 3, data: new Uint8Array(w * h * 3).fill(200) };
    const mask = { width: w, height: h, data: arr(c.mask) };
    const lit = (img: { data: Uint8Array }) => img.data.reduce((n, v) => n + (v > 0 ? 1 : 0), 0);
    const exact = coinCrop(image, mask, 64);
    const hull = coinCrop(image, mask, 64, { cropMask: "convex_hull" });
    assert.ok(lit(hull) > lit(exact), `${lit(hull)} vs ${lit(exact)}`);
    assert.throws(() => coinCrop(image, mask, 64, { cropMask: "circle" as any }), /crop_mask="circle": must be one of exact, convex_hull/);
  });
  for (const c of ops.rotate) {
    it(`rotationViews n=${c.n}`, () => {
      const [h, w] = c.src.shape;
      const views = rotationViews({ width: w, height: h, channels: 3, data: arr(c.src) }, c.n, 0);
      views.forEach((v, k) => {
        const s = diffStats(v.data, arr(c.views[k]));
        // multiples of 90 degrees are exact permutations (the release embedder's 4 views); other angles: OpenCV's
        // fixed-point warpAffine, within 3 levels
        assert.ok(k * 360 % (c.n * 90) === 0 ? s.n === 0 : s.max <= 3 && s.frac <= 0.1, `view ${k}: ${JSON.stringify(s)}`);
      });
    });
  }
});

/** A bright disc (220) of radius `r` at (cx, cy) on a dark photo (`bg`): the stand-in models call bright pixels coin. */
function discPhoto(width: number, height: number, cx: number, cy: number, r: number, bg: number) {
  const data = new Uint8Array(width * height * 3).fill(bg);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
    if ((x - cx) ** 2 + (y - cy) ** 2 <= r ** 2) data.fill(220, (y * width + x) * 3, (y * width + x) * 3 + 3);
  }
  return { width, height, channels: 3, data };
}

describe("twoPassSegment single_pass_box_frac (spec 2.4)", () => {
  // a bright disc of radius 30 in a 200x120 photo; the stand-in model calls bright pixels coin. Its square box
  // with 15 % margins is about 80 px, 0.4 of the photo's longer side.
  const photo = discPhoto(200, 120, 140, 60, 30, 40);
  let calls = 0;
  const predict = async (sq: { width: number; height: number; data: Uint8Array }) => {
    calls++;
    const out = new Float32Array(sq.width * sq.height);
    for (let i = 0; i < out.length; i++) out[i] = sq.data[i * 3]! > 127 ? 1 : 0;
    return { width: sq.width, height: sq.height, data: out };
  };

  it("runs the second pass below the share and stops after the first at or above it", async () => {
    calls = 0;
    const small = await twoPassSegment(photo, predict, { sizePx: 64, singlePassBoxFrac: 0.5 });
    assert.equal(calls, 2);
    assert.equal(small.passes, 2);
    calls = 0;
    const big = await twoPassSegment(photo, predict, { sizePx: 64, singlePassBoxFrac: 0.3 });
    assert.equal(calls, 1);
    assert.equal(big.passes, 1);
    assert.deepEqual(big.mask, big.firstPassMask);
    calls = 0;
    assert.equal((await twoPassSegment(photo, predict, { sizePx: 64 })).passes, 2); // absent: always two
  });
});

describe("twoPassSegment tiles (spec 2.3)", () => {
  it("tileBoxes: an n×n grid of squares of ceil(f × L) over the centred frame, corner to corner, row by row", () => {
    assert.deepEqual(tileBoxes(320, 240, 0.6), [[0, -40, 192, 152], [128, -40, 320, 152], [0, 88, 192, 280], [128, 88, 320, 280]]);
    assert.deepEqual(tileBoxes(199, 301, 0.6), [[-51, 0, 130, 181], [69, 0, 250, 181], [-51, 120, 130, 301], [69, 120, 250, 301]]);
    assert.deepEqual(tileBoxes(199, 301, 0.4), [[-51, 0, 70, 121], [39, 0, 160, 121], [129, 0, 250, 121], [-51, 90, 70, 211],
      [39, 90, 160, 211], [129, 90, 250, 211], [-51, 180, 70, 301], [39, 180, 160, 301], [129, 180, 250, 301]]);
    assert.deepEqual(tileBoxes(320, 240, 0.34).map((b) => b[0]), [0, 105, 211, 0, 105, 211, 0, 105, 211]); // floor offsets
  });

  // a 24-px coin in a 320x240 photo: 12 px in the 128-px first pass, which (like the shipped model) cannot see it
  const photo = discPhoto(320, 240, 250, 190, 12, 30);
  let calls = 0;
  const blind = async (sq: { width: number; height: number; data: Uint8Array }) => {
    calls++;
    const out = new Float32Array(sq.width * sq.height);
    let x0 = Infinity, x1 = -1;
    for (let i = 0; i < out.length; i++) if (sq.data[i * 3]! > 127) { x0 = Math.min(x0, i % sq.width); x1 = Math.max(x1, i % sq.width); }
    if (x1 - x0 + 1 >= 16) for (let i = 0; i < out.length; i++) out[i] = sq.data[i * 3]! > 127 ? 1 : 0;
    return { width: sq.width, height: sq.height, data: out };
  };

  it("finds the coin in the tiles only when the metadata asks for them", async () => {
    calls = 0;
    const plain = await twoPassSegment(photo, blind, { sizePx: 128 });
    assert.equal(plain.mask, null);
    assert.equal(plain.tiled, false);
    assert.equal(calls, 1);
    calls = 0;
    const seg = await twoPassSegment(photo, blind, { sizePx: 128, tileFrac: 0.6 });
    assert.ok(seg.mask !== null && seg.tiled);
    assert.equal(seg.passes, 2);
    assert.equal(calls, 6); // whole photo, 2 x 2 tiles, the second pass
    const [x0, y0, x1, y1] = seg.bbox!;
    assert.ok(Math.abs((x0 + x1) / 2 - 250) <= 2 && Math.abs((y0 + y1) / 2 - 190) <= 2, `bbox ${seg.bbox}`);
  });
});


describe("twoPassSegment views (spec 2.7)", () => {
  it("view k is the input turned k quarter turns counter-clockwise, out[y][x] = in[x][S - 1 - y], and its map turned back", async () => {
    assert.deepEqual(Array.from(quarterTurnSource(3, 1)), [2, 5, 8, 1, 4, 7, 0, 3, 6]);
    assert.deepEqual(Array.from(quarterTurnSource(3, -1)), [6, 3, 0, 7, 4, 1, 8, 5, 2]); // clockwise: back
    const square = { width: 5, height: 5, channels: 3, data: Uint8Array.from({ length: 75 }, (_, i) => (i * 37) % 251) };
    const seen: number[] = [];
    const red = async (sq: { width: number; height: number; data: Uint8Array }) => {
      seen.push(sq.data[0]!); // the turned input's top-left red value
      return { width: sq.width, height: sq.height, data: Float32Array.from({ length: 25 }, (_, i) => sq.data[i * 3]!) };
    };
    const mean = await viewsProbability(square, red, 4);
    assert.deepEqual(Array.from(mean.data), Array.from({ length: 25 }, (_, i) => square.data[i * 3]!)); // turned back: the same
    // top-left after k turns: in[0][4], in[4][4], in[4][0] (column, row) for k = 1, 2, 3
    assert.deepEqual(seen, [square.data[0], square.data[4 * 3], square.data[24 * 3], square.data[20 * 3]]);
    assert.deepEqual(turnSquare(turnSquare(square, 1), 3), square);
  });

  it("the second pass averages its views; the first pass looks once", async () => {
    const photo = discPhoto(200, 120, 140, 60, 30, 40);
    let calls = 0;
    const reachesRight = async (sq: { width: number; height: number; data: Uint8Array }) => {
      calls++; // coin pixels and 3 px to their right: an error on one side of the rim
      const out = new Float32Array(sq.width * sq.height);
      for (let i = 0; i < out.length; i++) {
        const x = i % sq.width;
        for (let d = 0; d <= 3 && x - d >= 0; d++) if (sq.data[(i - d) * 3]! > 127) out[i] = 1;
      }
      return { width: sq.width, height: sq.height, data: out };
    };
    const one = await twoPassSegment(photo, reachesRight, { sizePx: 64 });
    assert.equal(calls, 2);
    calls = 0;
    const four = await twoPassSegment(photo, reachesRight, { sizePx: 64, views: 4 });
    assert.equal(calls, 5); // one look, then 4 views of the crop
    assert.deepEqual(four.firstPassMask, one.firstPassMask);
    const rightmost = (m: { width: number; height: number; data: Uint8Array }) => {
      let r = -1;
      for (let i = 0; i < m.data.length; i++) if (m.data[i]) r = Math.max(r, i % m.width);
      return r;
    };
    assert.ok(rightmost(one.mask!) >= 172 && rightmost(four.mask!) <= 171, `${rightmost(one.mask!)} ${rightmost(four.mask!)}`);
    calls = 0;
    const single = await twoPassSegment(photo, reachesRight, { sizePx: 64, views: 4, singlePassBoxFrac: 0.3 });
    assert.equal(calls, 1); // no second pass: one look, the views never run
    assert.equal(single.passes, 1);
  });
});
