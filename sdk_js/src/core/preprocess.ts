/**
 * The pre/post-processing spec (docs/PIPELINE_SPEC.md), step by step as the Python reference
 * `sdk_python/preprocess.py` does it, on the OpenCV-equivalent operations of ./cv.ts.
 */
import {
  connectedComponents,
  convexHull,
  dilate,
  distanceTransform,
  ellipseOffsets,
  type ImageU8,
  type Interpolation,
  type MapF32,
  type Mask,
  polygonArea,
  resizeF32,
  resizeU8,
  rotateImage,
  roundHalfEven,
  traceOuterBorder,
} from "./cv.js";

export const IMAGENET_MEAN: readonly [number, number, number] = [0.485, 0.456, 0.406];
export const IMAGENET_STD: readonly [number, number, number] = [0.229, 0.224, 0.225];
export const DEFAULT_SEGMENT_THRESHOLD = 0.5;
export const DEFAULT_MARGIN_FRAC = 0.15;
export const DEFAULT_MIN_AREA_FRAC = 0.002;
/** Smallest segmenter `tile_frac` (spec 2.3): a 4×4 grid, 16 more segmenter calls at most. */
export const MIN_TILE_FRAC = 0.25;
/** Segmenter `views` (spec 2.7): quarter turns only, so every port turns the square exactly. */
export const VIEWS_ALLOWED: readonly number[] = [1, 2, 4];
export const DEFAULT_CROP_MARGIN_FRAC = 0.05;

const f = Math.fround;

/** How an RGB uint8 image becomes a model input; travels in every model's metadata (`input`). */
export interface InputSpec {
  readonly sizePx: number;
  readonly mean: readonly [number, number, number];
  readonly std: readonly [number, number, number];
  readonly colorOrder: "RGB";
  readonly layout: "NCHW" | "NHWC";
  readonly padValue: number;
  readonly interpolation: Interpolation;
}

/** Where the resized image sits inside the square model input. */
export interface Letterbox {
  readonly scale: number;
  readonly padX: number;
  readonly padY: number;
  readonly srcH: number;
  readonly srcW: number;
}

function filled(w: number, h: number, cn: number, value: number): ImageU8 {
  return { width: w, height: h, channels: cn, data: new Uint8Array(w * h * cn).fill(value) };
}

/** Resize keeping aspect so the longer side is `sizePx` (bilinear), pad to a centred square. */
export function letterbox(image: ImageU8, sizePx: number, padValue = 0): { square: ImageU8; box: Letterbox } {
  const { width: w, height: h, channels: cn } = image;
  const scale = sizePx / Math.max(h, w);
  const nw = Math.max(1, roundHalfEven(w * scale));
  const nh = Math.max(1, roundHalfEven(h * scale));
  const resized = resizeU8(image, nw, nh, "bilinear");
  const padX = Math.floor((sizePx - nw) / 2);
  const padY = Math.floor((sizePx - nh) / 2);
  const out = filled(sizePx, sizePx, cn, padValue);
  for (let y = 0; y < nh; y++) {
    out.data.set(resized.data.subarray(y * nw * cn, (y + 1) * nw * cn), ((padY + y) * sizePx + padX) * cn);
  }
  return { square: out, box: { scale, padX, padY, srcH: h, srcW: w } };
}

/** Map a `size` square map back onto the source image grid (bilinear). */
export function unletterbox(prob: MapF32, box: Letterbox): MapF32 {
  const nw = Math.max(1, roundHalfEven(box.srcW * box.scale));
  const nh = Math.max(1, roundHalfEven(box.srcH * box.scale));
  const inner = new Float32Array(nw * nh);
  for (let y = 0; y < nh; y++) {
    const row = (box.padY + y) * prob.width + box.padX;
    inner.set(prob.data.subarray(row, row + nw), y * nw);
  }
  return resizeF32({ width: nw, height: nh, data: inner }, box.srcW, box.srcH, "bilinear");
}

/** uint8 `S x S x 3` RGB -> float32 batch of one, normalised, in `spec.layout` (NCHW or NHWC). */
export function toModelInput(square: ImageU8, spec: InputSpec): Float32Array {
  let img = square;
  if (img.width !== spec.sizePx || img.height !== spec.sizePx) img = resizeU8(img, spec.sizePx, spec.sizePx, "bilinear");
  const n = spec.sizePx * spec.sizePx;
  const out = new Float32Array(3 * n);
  const mean = spec.mean.map(f);
  const std = spec.std.map(f);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      const v = f(f(f(img.data[i * 3 + c]! / 255) - mean[c]!) / std[c]!);
      out[spec.layout === "NCHW" ? c * n + i : i * 3 + c] = v;
    }
  }
  return out;
}

/** Mask logits -> probabilities (float32), the reference's tanh form. */
export function sigmoid(logits: Float32Array): Float32Array {
  return logits.map((x) => f(0.5 * f(1 + f(Math.tanh(f(0.5 * x))))));
}

export function threshold(prob: MapF32, t: number): Mask {
  const data = new Uint8Array(prob.data.length);
  for (let i = 0; i < data.length; i++) data[i] = prob.data[i]! >= t ? 1 : 0;
  return { width: prob.width, height: prob.height, data };
}

export function maskArea(mask: Mask): number {
  let n = 0;
  for (const v of mask.data) n += v;
  return n;
}

/**
 * Keep only the largest 8-connected component; null when it is below `minAreaFrac` of the image.
 * `splitTouching`: that component is first cut into its coins ({@link splitTouchingCoins}), the largest kept.
 */
export function largestComponent(mask: Mask, minAreaFrac = DEFAULT_MIN_AREA_FRAC, splitTouching = false): Mask | null {
  const cc = connectedComponents(mask);
  if (cc.count <= 1) return null;
  let best = 1;
  for (let l = 2; l < cc.count; l++) if (cc.areas[l]! > cc.areas[best]!) best = l;
  if (cc.areas[best]! < minAreaFrac * mask.width * mask.height) return null;
  const data = new Uint8Array(mask.data.length);
  for (let i = 0; i < data.length; i++) data[i] = cc.labels[i] === best ? 1 : 0;
  const component = { width: mask.width, height: mask.height, data };
  return splitTouching ? splitTouchingCoins(component) : component;
}

function boundingRect(mask: Mask): [number, number, number, number] {
  let x0 = mask.width, y0 = mask.height, x1 = -1, y1 = -1;
  for (let y = 0; y < mask.height; y++) {
    for (let x = 0; x < mask.width; x++) {
      if (mask.data[y * mask.width + x]) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return x1 < 0 ? [0, 0, 0, 0] : [x0, y0, x1 - x0 + 1, y1 - y0 + 1];
}

/**
 * The largest coin of one connected mask that may hold several touching or overlapping coins (spec step 2.6,
 * `preprocess.split_touching_coins`): distance-transform peaks are coin centres, pixels go to the centre of least
 * power distance, cuts that are not necks are merged back; everything on a copy at most `workPx` wide.
 */
export function splitTouchingCoins(
  component: Mask,
  { minPeakFrac = 0.35, maxNeckFrac = 0.8, maxSolidity = 0.97, workPx = 96 } = {},
): Mask {
  const [x, y, w, h] = boundingRect(component);
  if (w === 0 || h === 0) return component;
  const scale = Math.min(1, workPx / Math.max(w, h));
  let cw = w, ch = h;
  let crop = new Uint8Array(w * h);
  for (let yy = 0; yy < h; yy++) for (let xx = 0; xx < w; xx++) crop[yy * w + xx] = component.data[(y + yy) * component.width + x + xx]!;
  if (scale < 1) {
    cw = Math.max(1, roundHalfEven(w * scale));
    ch = Math.max(1, roundHalfEven(h * scale));
    const small = resizeF32({ width: w, height: h, data: Float32Array.from(crop) }, cw, ch, "area");
    crop = Uint8Array.from(small.data, (v) => (v >= 0.5 ? 1 : 0));
  }
  // outer contours (RETR_EXTERNAL): one per outermost component; the one of largest polygon area
  const cc = connectedComponents({ width: cw, height: ch, data: crop });
  if (cc.count <= 1) return component;
  const firstPixel = new Array<number>(cc.count).fill(-1);
  for (let i = 0; i < cw * ch; i++) if (cc.labels[i] && firstPixel[cc.labels[i]!]! < 0) firstPixel[cc.labels[i]!] = i;
  let outline: (readonly [number, number])[] = [];
  let outlineLabel = 0;
  let outlineArea = -1;
  for (let l = 1; l < cc.count; l++) {
    const p = firstPixel[l]!;
    const pts = traceOuterBorder(
      (xx, yy) => xx >= 0 && yy >= 0 && xx < cw && yy < ch && cc.labels[yy * cw + xx] === l,
      p % cw, Math.floor(p / cw),
    );
    const a = polygonArea(pts);
    if (a > outlineArea) {
      outline = pts;
      outlineArea = a;
      outlineLabel = l;
    }
  }
  if (outlineArea >= maxSolidity * Math.max(polygonArea(convexHull(outline)), 1)) return component; // convex: one coin
  // the outline filled (holes closed): everything not reachable from outside around this component
  const small = new Uint8Array(cw * ch);
  {
    const W = cw + 2, H = ch + 2;
    const outside = new Uint8Array(W * H);
    const stack = [0];
    outside[0] = 1;
    while (stack.length) {
      const i = stack.pop()!;
      const px = i % W, py = Math.floor(i / W);
      for (const [dx, dy] of [[1, 0], [-1, 0], [0, 1], [0, -1]] as const) {
        const qx = px + dx, qy = py + dy;
        if (qx < 0 || qy < 0 || qx >= W || qy >= H) continue;
        const j = qy * W + qx;
        if (outside[j]) continue;
        const inner = qx >= 1 && qy >= 1 && qx <= cw && qy <= ch && cc.labels[(qy - 1) * cw + qx - 1] === outlineLabel;
        if (inner) continue;
        outside[j] = 1;
        stack.push(j);
      }
    }
    for (let yy = 0; yy < ch; yy++) for (let xx = 0; xx < cw; xx++) small[yy * cw + xx] = outside[(yy + 1) * W + xx + 1] ? 0 : 1;
  }
  const dist = distanceTransform({ width: cw, height: ch, data: small }).data;
  let peak = 0;
  for (const v of dist) if (v > peak) peak = v;
  if (peak < 3) return component;
  const size = Math.max(3, 2 * roundHalfEven(minPeakFrac * peak) + 1);
  const dil = dilate(dist, cw, ch, ellipseOffsets(size));
  const localMax = new Uint8Array(cw * ch);
  for (let i = 0; i < localMax.length; i++) localMax[i] = dist[i]! >= dil[i]! && dist[i]! >= minPeakFrac * peak ? 1 : 0;
  const peaks = connectedComponents({ width: cw, height: ch, data: localMax });
  if (peaks.count <= 2) return component; // background + one peak: one coin
  const centres: { cx: number; cy: number; r: number }[] = [];
  for (let k = 1; k < peaks.count; k++) {
    let sx = 0, sy = 0, n = 0, r = 0;
    for (let i = 0; i < cw * ch; i++) {
      if (peaks.labels[i] === k) {
        sx += i % cw;
        sy += Math.floor(i / cw);
        n++;
        r = Math.max(r, dist[i]!);
      }
    }
    centres.push({ cx: sx / n, cy: sy / n, r });
  }
  const owner = new Int32Array(cw * ch).fill(-1);
  for (let i = 0; i < cw * ch; i++) {
    if (!small[i]) continue;
    const px = i % cw, py = Math.floor(i / cw);
    let best = 0, bestV = Infinity;
    centres.forEach(({ cx, cy, r }, k) => {
      const v = f((px - cx) ** 2 + (py - cy) ** 2 - r * r);
      if (v < bestV) {
        bestV = v;
        best = k;
      }
    });
    owner[i] = best;
  }
  const m = centres.length;
  const regions = Array.from({ length: m }, (_, k) => Uint8Array.from(owner, (o) => (o === k ? 1 : 0)));
  const sums = regions.map((r) => r.reduce((a, b) => a + b, 0));
  const parent = Array.from({ length: m }, (_, i) => i);
  const root = (i: number): number => {
    while (parent[i] !== i) i = parent[i]!;
    return i;
  };
  const box3: [number, number][] = [];
  for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) box3.push([dx, dy]);
  for (let i = 0; i < m; i++) {
    const grown = dilate(regions[i]!, cw, ch, box3);
    for (let j = i + 1; j < m; j++) {
      let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
      for (let p = 0; p < cw * ch; p++) {
        if (grown[p]! > 0 && regions[j]![p]) {
          const px = p % cw, py = Math.floor(p / cw);
          minX = Math.min(minX, px); maxX = Math.max(maxX, px);
          minY = Math.min(minY, py); maxY = Math.max(maxY, py);
        }
      }
      if (minX === Infinity) continue;
      const neck = Math.hypot(maxX - minX, maxY - minY) + 1;
      const diameter = 2 * Math.sqrt(Math.min(sums[i]!, sums[j]!) / Math.PI);
      if (neck >= maxNeckFrac * diameter) parent[root(j)] = root(i);
    }
  }
  const groups = new Map<number, Uint8Array>();
  regions.forEach((region, i) => {
    const g = groups.get(root(i)) ?? new Uint8Array(cw * ch);
    for (let p = 0; p < g.length; p++) g[p] = g[p]! | region[p]!;
    groups.set(root(i), g);
  });
  if (groups.size <= 1) return component;
  let kept: Uint8Array | null = null;
  let keptSum = -1;
  for (const g of groups.values()) {
    const s = g.reduce((a, b) => a + b, 0);
    if (s > keptSum) {
      kept = g;
      keptSum = s;
    }
  }
  let back: Uint8Array = kept!;
  if (scale < 1) {
    const big = resizeF32({ width: cw, height: ch, data: Float32Array.from(kept!) }, w, h, "bilinear");
    back = Uint8Array.from(big.data, (v) => (v >= 0.5 ? 1 : 0));
  }
  const out = new Uint8Array(component.data.length);
  for (let yy = 0; yy < h; yy++) {
    for (let xx = 0; xx < w; xx++) {
      const i = (y + yy) * component.width + x + xx;
      out[i] = back[yy * w + xx]! && component.data[i] ? 1 : 0;
    }
  }
  return { width: component.width, height: component.height, data: out };
}

/** Square `[x0, y0, x1, y1]` (exclusive ends) around the mask, grown by `marginFrac` per side; may leave the image. */
export function squareBbox(mask: Mask, marginFrac: number): [number, number, number, number] {
  const [bx, by, bw, bh] = boundingRect(mask);
  const x0 = bx, x1 = bx + bw, y0 = by, y1 = by + bh;
  const side = Math.max(x1 - x0, y1 - y0) * (1 + 2 * marginFrac);
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const half = side / 2;
  return [roundHalfEven(cx - half), roundHalfEven(cy - half), roundHalfEven(cx + half), roundHalfEven(cy + half)];
}

function cropPadded(image: ImageU8, box: readonly [number, number, number, number], padValue: number): ImageU8 {
  const [x0, y0, x1, y1] = box;
  const { width: w, height: h, channels: cn } = image;
  const out = filled(x1 - x0, y1 - y0, cn, padValue);
  const sx0 = Math.max(x0, 0), sy0 = Math.max(y0, 0), sx1 = Math.min(x1, w), sy1 = Math.min(y1, h);
  if (sx1 > sx0 && sy1 > sy0) {
    for (let y = sy0; y < sy1; y++) {
      out.data.set(image.data.subarray((y * w + sx0) * cn, (y * w + sx1) * cn), ((y - y0) * out.width + (sx0 - x0)) * cn);
    }
  }
  return out;
}


/** Result of the two-pass segmentation; `mask` null when no coin was found. */
export interface Segmentation {
  readonly mask: Mask | null;
  readonly bbox: [number, number, number, number] | null;
  readonly passes: number;
  readonly firstPassMask: Mask | null;
  /** The first pass found no coin, so the tiles of spec 2.3 ran (the mask, if any, comes from them). */
  readonly tiled: boolean;
}

/** Takes a `size` square RGB image, returns the coin probability map (same size). */
export type PredictFn = (square: ImageU8) => Promise<MapF32>;

export interface SegmentOptions {
  sizePx: number;
  threshold?: number;
  marginFrac?: number;
  minAreaFrac?: number;
  padValue?: number;
  twoPass?: boolean;
  minSecondPassAreaRatio?: number;
  splitTouching?: boolean;
  /** Spec 2.4: a crop box at least this share of the photo's longer side ends after one pass (null: never). */
  singlePassBoxFrac?: number | null;
  /** Spec 2.3: when the first pass finds no coin, a grid of tiles of this share of the longer side is segmented (null: never). */
  tileFrac?: number | null;
  /** Spec 2.7: the second pass averages the maps of this many turns of its crop (default 1). */
  views?: number;
  /** Called with the pass number when a pass starts (timings). */
  onPass?: (pass: number) => void;
}

/** For each cell of a `size`-square grid turned `turns` quarter turns counter-clockwise, the row-major index of the cell
 * it comes from (spec 2.7: one turn is `out[y][x] = in[x][size - 1 - y]`, numpy's `rot90`). */
export function quarterTurnSource(size: number, turns: number): Int32Array {
  const source = new Int32Array(size * size);
  const n = ((turns % 4) + 4) % 4;
  for (let i = 0; i < source.length; i++) {
    let r = Math.floor(i / size);
    let c = i % size;
    for (let t = 0; t < n; t++) [r, c] = [c, size - 1 - r];
    source[i] = r * size + c;
  }
  return source;
}

/** A square image turned `turns` quarter turns counter-clockwise (spec 2.7). */
export function turnSquare(image: ImageU8, turns: number): ImageU8 {
  if (image.width !== image.height) throw new RangeError(`turnSquare needs a square image, got ${image.width} x ${image.height}`);
  const cn = image.channels;
  const source = quarterTurnSource(image.width, turns);
  const data = new Uint8Array(image.data.length);
  for (let i = 0; i < source.length; i++) data.set(image.data.subarray(source[i]! * cn, source[i]! * cn + cn), i * cn);
  return { width: image.width, height: image.height, channels: cn, data };
}

/** Spec 2.7: the mean probability map of `views` turns of a square model input; float32 sums in view order, then
 * divided by `views`. */
export async function viewsProbability(square: ImageU8, predict: PredictFn, views: number): Promise<MapF32> {
  const view0 = await predict(square);
  const total = Float32Array.from(view0.data);
  for (let k = 1; k < views; k++) {
    const turns = (k * 4) / views;
    const turned = await predict(turnSquare(square, turns));
    const source = quarterTurnSource(square.width, -turns);
    for (let i = 0; i < total.length; i++) total[i] = total[i]! + turned.data[source[i]!]!;
  }
  for (let i = 0; i < total.length; i++) total[i] = total[i]! / views;
  return { width: view0.width, height: view0.height, data: total };
}

async function predictOn(image: ImageU8, predict: PredictFn, sizePx: number, padValue: number, views = 1): Promise<MapF32> {
  const { square, box } = letterbox(image, sizePx, padValue);
  return unletterbox(views === 1 ? await predict(square) : await viewsProbability(square, predict, views), box);
}

/** Spec 2.3's tiles: an n×n grid, n = ceil(1 / tileFrac), of side ceil(tileFrac × L) spread evenly over the photo's
 * centred L×L frame from corner to corner (integer offsets k·(L − t) div (n − 1)), row by row. */
export function tileBoxes(width: number, height: number, tileFrac: number): [number, number, number, number][] {
  const side = Math.max(width, height);
  const tile = Math.ceil(tileFrac * side);
  const count = Math.ceil(1 / tileFrac);
  const fx0 = Math.floor((width - side) / 2);
  const fy0 = Math.floor((height - side) / 2);
  const offsets = Array.from({ length: count }, (_, k) => Math.floor((k * (side - tile)) / (count - 1)));
  const boxes: [number, number, number, number][] = [];
  for (const y of offsets) for (const x of offsets) boxes.push([fx0 + x, fy0 + y, fx0 + x + tile, fy0 + y + tile]);
  return boxes;
}

/** A crop's probability map written into the photo-size map at `box` (inside the photo; the maximum when `keepMax`). */
function paste(full: MapF32, cropProb: MapF32, box: [number, number, number, number], keepMax: boolean): void {
  const { width: w, height: h } = full;
  const [x0, y0, x1, y1] = box;
  const cw = x1 - x0;
  for (let y = Math.max(y0, 0); y < Math.min(y1, h); y++) {
    for (let x = Math.max(x0, 0); x < Math.min(x1, w); x++) {
      const v = cropProb.data[(y - y0) * cw + x - x0]!;
      full.data[y * w + x] = keepMax ? Math.max(full.data[y * w + x]!, v) : v;
    }
  }
}

/** Segment the photo (tiles when it finds no coin), keep the largest component, segment a square crop around it
 * again, averaged over `views` turns of the crop (spec step 2). */
export async function twoPassSegment(image: ImageU8, predict: PredictFn, o: SegmentOptions): Promise<Segmentation> {
  const t = o.threshold ?? DEFAULT_SEGMENT_THRESHOLD;
  const margin = o.marginFrac ?? DEFAULT_MARGIN_FRAC;
  const minArea = o.minAreaFrac ?? DEFAULT_MIN_AREA_FRAC;
  const pad = o.padValue ?? 0;
  const split = o.splitTouching ?? false;
  const { width: w, height: h } = image;
  const views = o.views ?? 1;
  o.onPass?.(1);
  let first = largestComponent(threshold(await predictOn(image, predict, o.sizePx, pad), t), minArea, split);
  const tiled = !first && o.tileFrac != null;
  if (tiled) {
    const full: MapF32 = { width: w, height: h, data: new Float32Array(w * h) };
    for (const box of tileBoxes(w, h, o.tileFrac!)) {
      paste(full, await predictOn(cropPadded(image, box, pad), predict, o.sizePx, pad), box, true);
    }
    first = largestComponent(threshold(full, t), minArea, split);
  }
  if (!first) return { mask: null, bbox: null, passes: 1, firstPassMask: null, tiled };
  if (o.twoPass === false) return { mask: first, bbox: squareBbox(first, margin), passes: 1, firstPassMask: first, tiled };
  const box = squareBbox(first, margin);
  const spf = o.singlePassBoxFrac;
  if (spf != null && Math.max(box[2] - box[0], box[3] - box[1]) >= spf * Math.max(w, h)) {
    return { mask: first, bbox: box, passes: 1, firstPassMask: first, tiled };
  }
  o.onPass?.(2);
  const full: MapF32 = { width: w, height: h, data: new Float32Array(w * h) };
  paste(full, await predictOn(cropPadded(image, box, pad), predict, o.sizePx, pad, views), box, false);
  const second = full.data.some((v) => v !== 0) ? largestComponent(threshold(full, t), minArea, split) : null;
  const lost = !second || maskArea(second) < (o.minSecondPassAreaRatio ?? 0.5) * maskArea(first);
  const mask = lost ? first : second;
  return { mask, bbox: squareBbox(mask, margin), passes: 2, firstPassMask: first, tiled };
}

/** Resize a square image to `sizePx`: "area" when shrinking (every source pixel averaged), bilinear otherwise. */
export function resizeSquare(square: ImageU8, sizePx: number, interpolation: Interpolation = "area"): ImageU8 {
  if (square.width === sizePx && square.height === sizePx) return square;
  const shrinking = square.height > sizePx;
  return resizeU8(square, sizePx, sizePx, interpolation === "area" && shrinking ? "area" : "bilinear");
}

/** Which pixels the crop keeps (embedder metadata `extra.crop_mask`): the mask's, or its convex hull's. */
export const CROP_MASKS = ["exact", "convex_hull"] as const;
export type CropMask = (typeof CROP_MASKS)[number];

/**
 * `preprocess.convex_hull_fill` (spec step 3): the pixels whose centres lie inside or on the convex hull of the
 * mask's pixel centres, by integer arithmetic (the hull of each row's two end pixels, then each row's interval inside
 * every hull edge; every value here is an integer below 2^31, exact in a double). A hull without area (a point, a
 * line of pixels): the mask as it is.
 */
export function convexHullFill(mask: Mask): Mask {
  const { width: w, height: h, data } = mask;
  const ends: [number, number][] = [];
  let y0 = -1, y1 = -1;
  for (let y = 0; y < h; y++) {
    let left = -1, right = -1;
    for (let x = 0; x < w; x++) if (data[y * w + x]) { if (left < 0) left = x; right = x; }
    if (left < 0) continue;
    if (y0 < 0) y0 = y;
    y1 = y;
    ends.push([left, y]);
    if (right !== left) ends.push([right, y]);
  }
  const out = data.slice();
  const hull = convexHull(ends);
  if (hull.length < 3) return { width: w, height: h, data: out };
  for (let y = y0; y <= y1; y++) {
    let lo = 0, hi = w - 1, inside = true;
    for (let i = 0; i < hull.length; i++) {
      const [ax, ay] = hull[i]!;
      const [bx, by] = hull[(i + 1) % hull.length]!;
      const dx = bx - ax, dy = by - ay;
      const bound = dx * (y - ay) + dy * ax; // (x, y) on or left of a -> b: dy * x <= bound
      if (dy > 0) hi = Math.min(hi, Math.floor(bound / dy));
      else if (dy < 0) lo = Math.max(lo, -Math.floor(-bound / dy));
      else if (dx * (y - ay) < 0) inside = false;
    }
    if (inside) for (let x = lo; x <= hi; x++) out[y * w + x] = 1;
  }
  return { width: w, height: h, data: out };
}

/**
 * Background-removed square crop of the coin (spec step 3); `mask` null: the whole photo letterboxed. `cropMask`
 * "convex_hull" keeps the mask's {@link convexHullFill} instead of the mask.
 */
export function coinCrop(
  image: ImageU8,
  mask: Mask | null,
  outSizePx: number,
  {
    marginFrac = DEFAULT_CROP_MARGIN_FRAC, fillValue = 0, interpolation = "bilinear" as Interpolation,
    cropMask = "exact" as CropMask,
  } = {},
): ImageU8 {
  if (!CROP_MASKS.includes(cropMask)) throw new RangeError(`crop_mask=${JSON.stringify(cropMask)}: must be one of ${CROP_MASKS.join(", ")}`);
  if (!mask || maskArea(mask) === 0) return letterbox(image, outSizePx, fillValue).square;
  if (cropMask === "convex_hull") mask = convexHullFill(mask);
  const cn = image.channels;
  const cut = new Uint8Array(image.data.length);
  for (let i = 0; i < mask.data.length; i++) {
    for (let c = 0; c < cn; c++) cut[i * cn + c] = mask.data[i] ? image.data[i * cn + c]! : fillValue;
  }
  const box = squareBbox(mask, marginFrac);
  return resizeSquare(cropPadded({ ...image, data: cut }, box, fillValue), outSizePx, interpolation);
}

/** `np.rot90(square, k)`: turned counter-clockwise by k * 90 degrees. */
export function rot90(img: ImageU8, k: number): ImageU8 {
  k = ((k % 4) + 4) % 4;
  if (k === 0) return { ...img, data: img.data.slice() };
  const { width: w, height: h, channels: cn, data } = img;
  const ow = k % 2 ? h : w;
  const oh = k % 2 ? w : h;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      let sx: number, sy: number;
      if (k === 1) { sx = w - 1 - y; sy = x; }
      else if (k === 2) { sx = w - 1 - x; sy = h - 1 - y; }
      else { sx = y; sy = h - 1 - x; }
      for (let c = 0; c < cn; c++) out[(y * ow + x) * cn + c] = data[(sy * w + sx) * cn + c]!;
    }
  }
  return { width: ow, height: oh, channels: cn, data: out };
}

/** The crop turned by `k * 360 / n` degrees counter-clockwise (k = 0..n-1), spec step 4. */
export function rotationViews(square: ImageU8, n: number, fillValue = 0): ImageU8[] {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`nRotations=${n}: must be an integer >= 1 (1 = no rotation averaging)`);
  const views: ImageU8[] = [];
  for (let k = 0; k < n; k++) {
    const angle = (360 * k) / n;
    views.push(angle % 90 === 0 ? rot90(square, angle / 90) : rotateImage(square, angle, fillValue));
  }
  return views;
}

/** L2-normalised mean of L2-normalised vectors (float32). */
export function meanUnitVector(vectors: Float32Array[]): Float32Array {
  const d = vectors[0]!.length;
  const mean = new Float32Array(d);
  for (const v of vectors) {
    let ss = 0;
    for (const x of v) ss += x * x;
    const n = Math.max(Math.sqrt(ss), 1e-12);
    for (let j = 0; j < d; j++) mean[j] = f(mean[j]! + f(v[j]! / n));
  }
  for (let j = 0; j < d; j++) mean[j] = f(mean[j]! / vectors.length);
  let ss = 0;
  for (const x of mean) ss += x * x;
  const n = Math.max(Math.sqrt(ss), 1e-12);
  return mean.map((x) => f(x / n));
}
