/**
 * The OpenCV image operations the pipeline uses (docs/PIPELINE_SPEC.md), written out in TypeScript with OpenCV's
 * own definitions so the results match the Python reference (`sdk_python/preprocess.py`, which calls cv2):
 * `resize` INTER_LINEAR (fixed-point for uint8, as OpenCV's SIMD path) and INTER_AREA, 8-connected components,
 * outer contour tracing with area and convex hull, `distanceTransform` (L2, 5x5 mask), `dilate`, `warpAffine`.
 * Images are row-major, channels interleaved.
 */

/** An 8-bit image, `height x width x channels`, row-major interleaved (RGB for photos). */
export interface ImageU8 {
  readonly width: number;
  readonly height: number;
  readonly channels: number;
  readonly data: Uint8Array;
}

/** A single-channel float32 map (probabilities, logits, distances). */
export interface MapF32 {
  readonly width: number;
  readonly height: number;
  readonly data: Float32Array;
}

/** A binary mask, 1 = set. */
export interface Mask {
  readonly width: number;
  readonly height: number;
  readonly data: Uint8Array;
}

const f = Math.fround;

/** cvRound / Python round(): nearest, ties to even. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function clampU8(x: number): number {
  return x < 0 ? 0 : x > 255 ? 255 : x;
}

// ------------------------------------------------------------------------------------------------ resize

interface LinearTab {
  ofs: Int32Array; // source index (pixel) per destination index
  alpha: Float32Array; // weight of the first pixel (second: 1 - alpha... stored explicitly)
  beta: Float32Array; // weight of the second pixel
  single: Uint8Array; // 1 = only the first pixel contributes (OpenCV's xmax tail)
}

/** OpenCV's coefficient tables of resizeGeneric for INTER_LINEAR (or INTER_AREA upscaling: `areaMode`). */
function linearTab(ssize: number, dsize: number, clampIndex: boolean, areaMode: boolean): LinearTab {
  const invScale = dsize / ssize;
  const scale = 1 / invScale;
  const ofs = new Int32Array(dsize);
  const alpha = new Float32Array(dsize);
  const beta = new Float32Array(dsize);
  const single = new Uint8Array(dsize);
  for (let d = 0; d < dsize; d++) {
    let s: number;
    let fx: number;
    if (!areaMode) {
      fx = f((d + 0.5) * scale - 0.5);
      s = Math.floor(fx);
      fx = f(fx - s);
    } else {
      s = Math.floor(d * scale);
      fx = f(d + 1 - (s + 1) * invScale);
      fx = fx <= 0 ? 0 : f(fx - Math.floor(fx));
    }
    if (clampIndex) {
      if (s < 0) {
        fx = 0;
        s = 0;
      }
      if (s >= ssize - 1) {
        fx = 0;
        s = ssize - 1;
        single[d] = 1;
      }
    }
    ofs[d] = s;
    alpha[d] = f(1 - fx);
    beta[d] = fx;
  }
  return { ofs, alpha, beta, single };
}

const COEF_SCALE = 2048;

function resizeLinearU8(src: ImageU8, dw: number, dh: number, areaMode: boolean): ImageU8 {
  const { width: sw, height: sh, channels: cn, data: s } = src;
  const xt = linearTab(sw, dw, true, areaMode);
  const yt = linearTab(sh, dh, false, areaMode);
  const ia0 = Int32Array.from(xt.alpha, (a) => roundHalfEven(a * COEF_SCALE));
  const ia1 = Int32Array.from(xt.beta, (a) => roundHalfEven(a * COEF_SCALE));
  const rowW = dw * cn;
  // horizontal pass for every source row that is used, cached
  const rows = new Map<number, Int32Array>();
  const hrow = (sy: number): Int32Array => {
    let r = rows.get(sy);
    if (r) return r;
    r = new Int32Array(rowW);
    const base = sy * sw * cn;
    for (let dx = 0; dx < dw; dx++) {
      const sx = xt.ofs[dx]! * cn;
      for (let c = 0; c < cn; c++) {
        const a = s[base + sx + c]!;
        r[dx * cn + c] = xt.single[dx] ? a * ia0[dx]! : a * ia0[dx]! + s[base + sx + cn + c]! * ia1[dx]!;
      }
    }
    rows.set(sy, r);
    return r;
  };
  const out = new Uint8Array(dh * rowW);
  // OpenCV's vertical pass: SIMD lanes (16 bytes, then 8) use ((S>>4)*b >> 16) sums, the tail the exact formula
  const simd16 = Math.floor(rowW / 16) * 16;
  let simdEnd = simd16;
  while (simdEnd < rowW - 8) simdEnd += 8;
  for (let dy = 0; dy < dh; dy++) {
    const sy = yt.ofs[dy]!;
    const r0 = hrow(Math.min(Math.max(sy, 0), sh - 1));
    const r1 = hrow(Math.min(Math.max(sy + 1, 0), sh - 1));
    const b0 = roundHalfEven(yt.alpha[dy]! * COEF_SCALE);
    const b1 = roundHalfEven(yt.beta[dy]! * COEF_SCALE);
    const o = dy * rowW;
    for (let x = 0; x < rowW; x++) {
      let v: number;
      if (x < simdEnd) {
        v = (((r0[x]! >> 4) * b0) >> 16) + (((r1[x]! >> 4) * b1) >> 16);
        v = (v + 2) >> 2;
      } else {
        v = (r0[x]! * b0 + r1[x]! * b1 + (1 << 21)) >> 22;
      }
      out[o + x] = clampU8(v);
    }
  }
  return { width: dw, height: dh, channels: cn, data: out };
}

function resizeLinearF32(src: MapF32, dw: number, dh: number, areaMode: boolean): MapF32 {
  const { width: sw, height: sh, data: s } = src;
  const xt = linearTab(sw, dw, true, areaMode);
  const yt = linearTab(sh, dh, false, areaMode);
  const rows = new Map<number, Float32Array>();
  const hrow = (sy: number): Float32Array => {
    let r = rows.get(sy);
    if (r) return r;
    r = new Float32Array(dw);
    const base = sy * sw;
    for (let dx = 0; dx < dw; dx++) {
      const sx = base + xt.ofs[dx]!;
      r[dx] = xt.single[dx] ? f(s[sx]! * xt.alpha[dx]!) : f(f(s[sx]! * xt.alpha[dx]!) + f(s[sx + 1]! * xt.beta[dx]!));
    }
    rows.set(sy, r);
    return r;
  };
  const out = new Float32Array(dw * dh);
  for (let dy = 0; dy < dh; dy++) {
    const sy = yt.ofs[dy]!;
    const r0 = hrow(Math.min(Math.max(sy, 0), sh - 1));
    const r1 = hrow(Math.min(Math.max(sy + 1, 0), sh - 1));
    const b0 = yt.alpha[dy]!;
    const b1 = yt.beta[dy]!;
    for (let x = 0; x < dw; x++) out[dy * dw + x] = f(f(r0[x]! * b0) + f(r1[x]! * b1));
  }
  return { width: dw, height: dh, data: out };
}

interface AreaTab {
  di: number;
  si: number;
  alpha: number;
}

function areaTab(ssize: number, dsize: number, scale: number): AreaTab[] {
  const tab: AreaTab[] = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale;
    const fsx2 = fsx1 + scale;
    const cellWidth = Math.min(scale, ssize - fsx1);
    let sx1 = Math.ceil(fsx1);
    let sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, ssize - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) tab.push({ di: dx, si: sx1 - 1, alpha: f((sx1 - fsx1) / cellWidth) });
    for (let sx = sx1; sx < sx2; sx++) tab.push({ di: dx, si: sx, alpha: f(1 / cellWidth) });
    if (fsx2 - sx2 > 1e-3) tab.push({ di: dx, si: sx2, alpha: f(Math.min(Math.min(fsx2 - sx2, 1), cellWidth) / cellWidth) });
  }
  return tab;
}

/** INTER_AREA downscaling of interleaved data (uint8 rounds half to even; float32 stays float). */
function resizeAreaDown(
  s: ArrayLike<number>, sw: number, sh: number, cn: number, dw: number, dh: number, toU8: boolean,
): Float32Array | Uint8Array {
  const scaleX = sw / dw;
  const scaleY = sh / dh;
  const out = toU8 ? new Uint8Array(dw * dh * cn) : new Float32Array(dw * dh * cn);
  const isx = roundHalfEven(scaleX);
  const isy = roundHalfEven(scaleY);
  if (Math.abs(scaleX - isx) < Number.EPSILON && Math.abs(scaleY - isy) < Number.EPSILON) {
    // resizeAreaFast: plain block average
    const area = isx * isy;
    const inv = f(1 / area);
    for (let dy = 0; dy < dh; dy++) {
      for (let dx = 0; dx < dw; dx++) {
        for (let c = 0; c < cn; c++) {
          let sum = 0;
          for (let ky = 0; ky < isy; ky++) {
            const row = (dy * isy + ky) * sw;
            for (let kx = 0; kx < isx; kx++) sum = toU8 ? sum + s[(row + dx * isx + kx) * cn + c]! : f(sum + s[(row + dx * isx + kx) * cn + c]!);
          }
          const o = (dy * dw + dx) * cn + c;
          if (toU8) out[o] = area === 4 ? (sum + 2) >> 2 : clampU8(roundHalfEven(f(sum * inv)));
          else out[o] = f(sum * inv);
        }
      }
    }
    return out;
  }
  const xtab = areaTab(sw, dw, scaleX);
  const ytab = areaTab(sh, dh, scaleY);
  const rowW = dw * cn;
  const buf = new Float32Array(rowW);
  const sum = new Float32Array(rowW);
  let prev = -1;
  const flush = (dy: number) => {
    for (let x = 0; x < rowW; x++) out[dy * rowW + x] = toU8 ? clampU8(roundHalfEven(sum[x]!)) : sum[x]!;
  };
  for (const yt of ytab) {
    buf.fill(0);
    const base = yt.si * sw * cn;
    for (const xt of xtab) {
      for (let c = 0; c < cn; c++) {
        const di = xt.di * cn + c;
        buf[di] = f(buf[di]! + f(s[base + xt.si * cn + c]! * xt.alpha));
      }
    }
    const beta = yt.alpha;
    if (yt.di !== prev) {
      if (prev >= 0) flush(prev);
      for (let x = 0; x < rowW; x++) sum[x] = f(beta * buf[x]!);
      prev = yt.di;
    } else {
      for (let x = 0; x < rowW; x++) sum[x] = f(sum[x]! + f(beta * buf[x]!));
    }
  }
  if (prev >= 0) flush(prev);
  return out;
}

export type Interpolation = "bilinear" | "area";

/** `cv2.resize(src, (dw, dh), INTER_LINEAR | INTER_AREA)` for uint8 images. */
export function resizeU8(src: ImageU8, dw: number, dh: number, interp: Interpolation = "bilinear"): ImageU8 {
  if (dw === src.width && dh === src.height) return { ...src, data: src.data.slice() };
  const sx = src.width / dw;
  const sy = src.height / dh;
  const fastHalf = Math.abs(sx - 2) < Number.EPSILON && Math.abs(sy - 2) < Number.EPSILON;
  if (interp === "area" && sx >= 1 && sy >= 1) {
    return { width: dw, height: dh, channels: src.channels, data: resizeAreaDown(src.data, src.width, src.height, src.channels, dw, dh, true) as Uint8Array };
  }
  if (interp === "bilinear" && fastHalf) {
    // OpenCV: "in case of scale_x && scale_y is equal to 2, INTER_AREA (fast) also is equal to INTER_LINEAR"
    return { width: dw, height: dh, channels: src.channels, data: resizeAreaDown(src.data, src.width, src.height, src.channels, dw, dh, true) as Uint8Array };
  }
  return resizeLinearU8(src, dw, dh, interp === "area");
}

/** `cv2.resize` for single-channel float32 maps. */
export function resizeF32(src: MapF32, dw: number, dh: number, interp: Interpolation = "bilinear"): MapF32 {
  if (dw === src.width && dh === src.height) return { ...src, data: src.data.slice() };
  const sx = src.width / dw;
  const sy = src.height / dh;
  const fastHalf = Math.abs(sx - 2) < Number.EPSILON && Math.abs(sy - 2) < Number.EPSILON;
  if ((interp === "area" && sx >= 1 && sy >= 1) || (interp === "bilinear" && fastHalf)) {
    return { width: dw, height: dh, data: resizeAreaDown(src.data, src.width, src.height, 1, dw, dh, false) as Float32Array };
  }
  return resizeLinearF32(src, dw, dh, interp === "area");
}

// ------------------------------------------------------------------------------------------------ components

export interface Components {
  /** Number of labels including the background (as cv2.connectedComponents). */
  count: number;
  /** Label per pixel, 0 = background, 1.. in order of first appearance in raster order. */
  labels: Int32Array;
  /** Pixel count per label (index 0 = background). */
  areas: number[];
}

/** 8-connected components of a binary mask (`cv2.connectedComponentsWithStats(..., connectivity=8)`). */
export function connectedComponents(mask: Mask): Components {
  const { width: w, height: h, data } = mask;
  const labels = new Int32Array(w * h);
  const parent: number[] = [0];
  const find = (x: number): number => {
    while (parent[x] !== x) {
      parent[x] = parent[parent[x]!]!;
      x = parent[x]!;
    }
    return x;
  };
  const union = (a: number, b: number): number => {
    const ra = find(a);
    const rb = find(b);
    if (ra === rb) return ra;
    const lo = Math.min(ra, rb);
    parent[Math.max(ra, rb)] = lo;
    return lo;
  };
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!data[i]) continue;
      let l = 0;
      const nb = [
        x > 0 ? labels[i - 1]! : 0,
        y > 0 && x > 0 ? labels[i - w - 1]! : 0,
        y > 0 ? labels[i - w]! : 0,
        y > 0 && x < w - 1 ? labels[i - w + 1]! : 0,
      ];
      for (const n of nb) if (n) l = l ? union(l, n) : find(n);
      if (!l) {
        l = parent.length;
        parent.push(l);
      }
      labels[i] = l;
    }
  }
  // final labels in order of first appearance (the smallest provisional label of each set comes first)
  const final = new Int32Array(parent.length);
  let count = 1;
  const areas = [0];
  for (let i = 0; i < w * h; i++) {
    const l = labels[i]!;
    if (!l) {
      areas[0]!++;
      continue;
    }
    const r = find(l);
    if (!final[r]) {
      final[r] = count++;
      areas.push(0);
    }
    labels[i] = final[r]!;
    areas[labels[i]!]!++;
  }
  return { count, labels, areas };
}

// ------------------------------------------------------------------------------------------------ contours

type Point = readonly [x: number, y: number];

// 8 neighbours, clockwise in image coordinates (y down), starting east
const DIRS: Point[] = [[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]];

/**
 * Outer border of the 8-connected component containing the raster-first pixel `(x0, y0)` (Suzuki-Abe border
 * following, as cv2.findContours; pixels outside the image are 0). Returns the border pixels in order.
 */
export function traceOuterBorder(inside: (x: number, y: number) => boolean, x0: number, y0: number): Point[] {
  const dirOf = (dx: number, dy: number) => DIRS.findIndex(([a, b]) => a === dx && b === dy);
  // 3.1: from the west neighbour (background), search clockwise for a non-zero pixel
  let start = dirOf(-1, 0);
  let first: number | null = null;
  for (let k = 0; k < 8; k++) {
    const d = (start + k) % 8;
    if (inside(x0 + DIRS[d]![0], y0 + DIRS[d]![1])) {
      first = d;
      break;
    }
  }
  if (first === null) return [[x0, y0]];
  const p1: Point = [x0 + DIRS[first]![0], y0 + DIRS[first]![1]];
  let p2 = p1;
  let p3: Point = [x0, y0];
  const out: Point[] = [];
  for (let guard = 0; guard < 4 * 1e7; guard++) {
    // 3.3: from the element after p2 counter-clockwise, search counter-clockwise around p3
    start = dirOf(p2[0] - p3[0], p2[1] - p3[1]);
    let p4: Point | null = null;
    for (let k = 1; k <= 8; k++) {
      const d = (start - k + 16) % 8;
      const q: Point = [p3[0] + DIRS[d]![0], p3[1] + DIRS[d]![1]];
      if (inside(q[0], q[1])) {
        p4 = q;
        break;
      }
    }
    out.push(p3);
    if (p4![0] === x0 && p4![1] === y0 && p3[0] === p1[0] && p3[1] === p1[1]) break;
    p2 = p3;
    p3 = p4!;
  }
  return out;
}

/** Polygon area (shoelace), absolute, as cv2.contourArea. */
export function polygonArea(pts: readonly Point[]): number {
  let a = 0;
  for (let i = 0; i < pts.length; i++) {
    const [x1, y1] = pts[i]!;
    const [x2, y2] = pts[(i + 1) % pts.length]!;
    a += x1 * y2 - x2 * y1;
  }
  return Math.abs(a) / 2;
}

/** Convex hull (Andrew's monotone chain), as cv2.convexHull. */
export function convexHull(pts: readonly Point[]): Point[] {
  const p = [...new Map(pts.map((q) => [`${q[0]},${q[1]}`, q])).values()].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  if (p.length < 3) return p;
  const cross = (o: Point, a: Point, b: Point) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower: Point[] = [];
  for (const q of p) {
    while (lower.length >= 2 && cross(lower[lower.length - 2]!, lower[lower.length - 1]!, q) <= 0) lower.pop();
    lower.push(q);
  }
  const upper: Point[] = [];
  for (let i = p.length - 1; i >= 0; i--) {
    const q = p[i]!;
    while (upper.length >= 2 && cross(upper[upper.length - 2]!, upper[upper.length - 1]!, q) <= 0) upper.pop();
    upper.push(q);
  }
  return [...lower.slice(0, -1), ...upper.slice(0, -1)];
}

// ------------------------------------------------------------------------------------------------ morphology

/**
 * cv2.distanceTransform(mask, DIST_L2, 5): the two-pass 5x5 chamfer with weights (1, 1.4, 2.1969) in float32, as the
 * Intel IPP path OpenCV's wheels take (bit-exact with cv2's output); pixels outside the image are not background.
 */
export function distanceTransform(mask: Mask): MapF32 {
  const { width: w, height: h, data } = mask;
  const B = 2;
  const step = w + 2 * B;
  const INF = 3.4028234663852886e38;
  const HV = 1;
  const DIAG = f(1.4);
  const LONG = f(2.1969);
  const tmp = new Float32Array((h + 2 * B) * step).fill(INF);
  const at = (y: number, x: number) => (y + B) * step + x + B;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const j = at(y, x);
      if (!data[y * w + x]) {
        tmp[j] = 0;
        continue;
      }
      tmp[j] = Math.min(
        f(tmp[j - 2 * step - 1]! + LONG), f(tmp[j - 2 * step + 1]! + LONG), f(tmp[j - step - 2]! + LONG),
        f(tmp[j - step - 1]! + DIAG), f(tmp[j - step]! + HV), f(tmp[j - step + 1]! + DIAG), f(tmp[j - step + 2]! + LONG),
        f(tmp[j - 1]! + HV),
      );
    }
  }
  const out = new Float32Array(w * h);
  for (let y = h - 1; y >= 0; y--) {
    for (let x = w - 1; x >= 0; x--) {
      const j = at(y, x);
      tmp[j] = Math.min(
        tmp[j]!, f(tmp[j + 2 * step + 1]! + LONG), f(tmp[j + 2 * step - 1]! + LONG), f(tmp[j + step + 2]! + LONG),
        f(tmp[j + step + 1]! + DIAG), f(tmp[j + step]! + HV), f(tmp[j + step - 1]! + DIAG), f(tmp[j + step - 2]! + LONG),
        f(tmp[j + 1]! + HV),
      );
      out[y * w + x] = tmp[j]!;
    }
  }
  return { width: w, height: h, data: out };
}

/** cv2.getStructuringElement(MORPH_ELLIPSE, (size, size)) as a list of (dx, dy) offsets from the anchor. */
export function ellipseOffsets(size: number): Point[] {
  const r = Math.floor(size / 2);
  const c = Math.floor(size / 2);
  const inv = r ? 1 / (r * r) : 0;
  const out: Point[] = [];
  for (let i = 0; i < size; i++) {
    const dy = i - r;
    if (Math.abs(dy) > r) continue;
    const dx = roundHalfEven(c * Math.sqrt((r * r - dy * dy) * inv));
    const j1 = Math.max(c - dx, 0);
    const j2 = Math.min(c + dx + 1, size);
    for (let j = j1; j < j2; j++) out.push([j - c, i - r]);
  }
  return out;
}

/** Grey dilation (max over the kernel offsets; pixels outside the image are ignored, as OpenCV's default). */
export function dilate(src: Float32Array | Uint8Array, w: number, h: number, offsets: readonly Point[]): Float32Array {
  const out = new Float32Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let m = -Infinity;
      for (const [dx, dy] of offsets) {
        const xx = x + dx;
        const yy = y + dy;
        if (xx >= 0 && yy >= 0 && xx < w && yy < h) {
          const v = src[yy * w + xx]!;
          if (v > m) m = v;
        }
      }
      out[y * w + x] = m;
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------ warp

/**
 * cv2.warpAffine(src, cv2.getRotationMatrix2D(((w-1)/2, (h-1)/2), angleDeg, 1), (w, h), INTER_LINEAR,
 * BORDER_CONSTANT, fill): bilinear with OpenCV's 1/32-pixel coordinate grid and 15-bit weights.
 */
export function rotateImage(src: ImageU8, angleDeg: number, fill: number): ImageU8 {
  const { width: w, height: h, channels: cn, data } = src;
  const a = (angleDeg * Math.PI) / 180;
  const alpha = Math.cos(a);
  const beta = Math.sin(a);
  const cx = (w - 1) / 2;
  const cy = (h - 1) / 2;
  // forward matrix as getRotationMatrix2D, then inverted (warpAffine maps dst -> src with the inverse)
  const m = [alpha, beta, (1 - alpha) * cx - beta * cy, -beta, alpha, beta * cx + (1 - alpha) * cy];
  const det = m[0]! * m[4]! - m[1]! * m[3]!;
  const D = det !== 0 ? 1 / det : 0;
  const A11 = m[4]! * D, A22 = m[0]! * D, A12 = -m[1]! * D, A21 = -m[3]! * D;
  const b1 = -A11 * m[2]! - A12 * m[5]!;
  const b2 = -A21 * m[2]! - A22 * m[5]!;
  const TAB = 32;
  const AB = 1024; // AB_BITS = 10
  const sat = (v: number) => roundHalfEven(v);
  const out = new Uint8Array(w * h * cn);
  for (let y = 0; y < h; y++) {
    const X0 = sat((A12 * y + b1) * AB) + 16;
    const Y0 = sat((A22 * y + b2) * AB) + 16;
    for (let x = 0; x < w; x++) {
      const X = (X0 + sat(A11 * x * AB)) >> 5;
      const Y = (Y0 + sat(A21 * x * AB)) >> 5;
      const sx = X >> 5;
      const sy = Y >> 5;
      const fx = (X & (TAB - 1)) / TAB;
      const fy = (Y & (TAB - 1)) / TAB;
      const wts = [(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy].map((v) => roundHalfEven(v * 32768));
      const outside = sx >= w || sx + 1 < 0 || sy >= h || sy + 1 < 0;
      for (let c = 0; c < cn; c++) {
        if (outside) {
          out[(y * w + x) * cn + c] = fill;
          continue;
        }
        let acc = 0;
        [[0, 0], [1, 0], [0, 1], [1, 1]].forEach(([ox, oy], k) => {
          const xx = sx + ox!;
          const yy = sy + oy!;
          const v = xx >= 0 && yy >= 0 && xx < w && yy < h ? data[(yy * w + xx) * cn + c]! : fill;
          acc += v * wts[k]!;
        });
        out[(y * w + x) * cn + c] = clampU8((acc + (1 << 14)) >> 15);
      }
    }
  }
  return { width: w, height: h, channels: cn, data: out };
}
