/**
 * Decoding a photo into `H x W x 3` uint8 RGB exactly as the reference (`sdk_python/images.py`, spec step 0):
 * refuse > 64 MP before decoding, EXIF orientation, transparent pixels composited on white, longer side <= 2048.
 * The codec itself is platform code behind {@link ImageDecoder}: jpeg-js/pngjs in Node, the browser's own decoder
 * (createImageBitmap) in browsers.
 */
import type { ImageU8 } from "./cv.js";
import { ImageError } from "./errors.js";

export const MAX_INPUT_PIXELS = 64_000_000;
export const MAX_WORKING_SIDE_PX = 2048;

/** What a platform decoder returns: RGB or RGBA pixels, and the EXIF orientation it did NOT apply (1 = none). */
export interface DecodedImage {
  readonly width: number;
  readonly height: number;
  readonly channels: 3 | 4;
  readonly data: Uint8Array | Uint8ClampedArray;
  readonly orientation?: number;
  /** JPEG DCT downscale the decoder already applied (1 = none); see {@link draftScale}. */
  readonly draft?: number;
}

export interface ImageDecoder {
  /** Decode a JPEG/PNG (WebP... where the platform can); `maxSide` lets a JPEG decoder pick a DCT downscale. */
  decode(bytes: Uint8Array, options: { maxSide: number }): Promise<DecodedImage>;
}

/** Width and height from the file header (JPEG SOF, PNG IHDR, WebP VP8/VP8L/VP8X), before any decoding. */
export function peekSize(b: Uint8Array): { width: number; height: number; format: string } | null {
  const u16 = (i: number) => (b[i]! << 8) | b[i + 1]!;
  const u32 = (i: number) => ((b[i]! << 24) >>> 0) + (b[i + 1]! << 16) + (b[i + 2]! << 8) + b[i + 3]!;
  if (b.length >= 24 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) {
    return { width: u32(16), height: u32(20), format: "png" };
  }
  if (b.length >= 4 && b[0] === 0xff && b[1] === 0xd8) {
    let i = 2;
    while (i + 9 < b.length) {
      if (b[i] !== 0xff) return null;
      const marker = b[i + 1]!;
      if (marker === 0xff) { i++; continue; }
      const len = u16(i + 2);
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return { width: u16(i + 7), height: u16(i + 5), format: "jpeg" };
      }
      i += 2 + len;
    }
    return null;
  }
  if (b.length >= 30 && String.fromCharCode(...b.subarray(0, 4)) === "RIFF" && String.fromCharCode(...b.subarray(8, 12)) === "WEBP") {
    const kind = String.fromCharCode(...b.subarray(12, 16));
    if (kind === "VP8X") return { width: 1 + (b[24]! | (b[25]! << 8) | (b[26]! << 16)), height: 1 + (b[27]! | (b[28]! << 8) | (b[29]! << 16)), format: "webp" };
    if (kind === "VP8 ") return { width: (b[26]! | (b[27]! << 8)) & 0x3fff, height: (b[28]! | (b[29]! << 8)) & 0x3fff, format: "webp" };
    if (kind === "VP8L") {
      const bits = b[21]! | (b[22]! << 8) | (b[23]! << 16) | (b[24]! << 24);
      return { width: (bits & 0x3fff) + 1, height: ((bits >> 14) & 0x3fff) + 1, format: "webp" };
    }
  }
  return null;
}

/** EXIF orientation (1..8) of a JPEG's APP1 Exif segment; 1 when absent or unreadable. */
export function exifOrientation(b: Uint8Array): number {
  if (b[0] !== 0xff || b[1] !== 0xd8) return 1;
  let i = 2;
  while (i + 4 < b.length && b[i] === 0xff) {
    const marker = b[i + 1]!;
    const len = (b[i + 2]! << 8) | b[i + 3]!;
    if (marker === 0xda) break;
    if (marker === 0xe1 && String.fromCharCode(...b.subarray(i + 4, i + 10)) === "Exif\0\0") {
      const t = i + 10;
      const le = b[t] === 0x49;
      const u16 = (p: number) => (le ? b[p]! | (b[p + 1]! << 8) : (b[p]! << 8) | b[p + 1]!);
      const u32 = (p: number) => (le ? (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16)) + b[p + 3]! * 2 ** 24 : b[p]! * 2 ** 24 + ((b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!));
      const ifd = t + u32(t + 4);
      if (ifd + 2 > b.length) return 1;
      const n = u16(ifd);
      for (let k = 0; k < n; k++) {
        const e = ifd + 2 + 12 * k;
        if (e + 12 > b.length) return 1;
        if (u16(e) === 0x0112) {
          const v = u16(e + 8);
          return v >= 1 && v <= 8 ? v : 1;
        }
      }
      return 1;
    }
    i += 2 + len;
  }
  return 1;
}

/** Pillow's JPEG draft scale for a target size: the largest of 8, 4, 2, 1 not above min(w // tw, h // th). */
export function draftScale(width: number, height: number, tw: number, th: number): number {
  const scale = Math.min(Math.floor(width / tw), Math.floor(height / th));
  for (const a of [8, 4, 2, 1]) if (scale >= a) return a;
  return 1;
}

/** Box-average downscale by an integer factor with ceil-sized output (what a JPEG DCT downscale approximates). */
export function reduceBy(img: ImageU8, a: number): ImageU8 {
  if (a === 1) return img;
  const w = Math.ceil(img.width / a), h = Math.ceil(img.height / a), cn = img.channels;
  const out = new Uint8Array(w * h * cn);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < cn; c++) {
        let s = 0, n = 0;
        for (let yy = y * a; yy < Math.min((y + 1) * a, img.height); yy++) {
          for (let xx = x * a; xx < Math.min((x + 1) * a, img.width); xx++, n++) s += img.data[(yy * img.width + xx) * cn + c]!;
        }
        out[(y * w + x) * cn + c] = Math.round(s / n);
      }
    }
  }
  return { width: w, height: h, channels: cn, data: out };
}

/** Pillow's `Image.thumbnail` size rule (aspect kept, rounded the way Pillow rounds). */
export function thumbnailSize(w: number, h: number, max: number): [number, number] {
  let x = max, y = max;
  const aspect = w / h;
  const pick = (n: number, key: (n: number) => number) => Math.max([Math.floor(n), Math.ceil(n)].sort((a, b) => key(a) - key(b))[0]!, 1);
  if (x / y >= aspect) x = pick(y * aspect, (n) => Math.abs(aspect - n / y));
  else y = pick(x / aspect, (n) => (n === 0 ? 0 : Math.abs(aspect - x / n)));
  return [x, y];
}

/** Pillow's BILINEAR resample (triangle filter widened when shrinking: antialiased), separable, 8-bit rounding. */
export function pillowBilinear(img: ImageU8, dw: number, dh: number): ImageU8 {
  const pass = (src: Uint8Array, sw: number, sh: number, horizontal: boolean, outSize: number): Uint8Array => {
    const inSize = horizontal ? sw : sh;
    const scale = inSize / outSize;
    const fscale = Math.max(scale, 1);
    const support = fscale;
    const cn = img.channels;
    const ow = horizontal ? outSize : sw, oh = horizontal ? sh : outSize;
    const out = new Uint8Array(ow * oh * cn);
    for (let o = 0; o < outSize; o++) {
      const center = (o + 0.5) * scale;
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
      const ws: number[] = [];
      let total = 0;
      for (let x = xmin; x < xmax; x++) {
        const t = Math.abs((x - center + 0.5) / fscale);
        const wgt = t < 1 ? 1 - t : 0;
        ws.push(wgt);
        total += wgt;
      }
      const k = ws.map((wgt) => Math.trunc((total ? wgt / total : 0) * (1 << 22) + 0.5));
      const lines = horizontal ? sh : sw;
      for (let l = 0; l < lines; l++) {
        for (let c = 0; c < cn; c++) {
          let acc = 1 << 21;
          for (let j = 0; j < k.length; j++) {
            const sx = xmin + j;
            acc += src[(horizontal ? l * sw + sx : sx * sw + l) * cn + c]! * k[j]!;
          }
          const v = acc >> 22;
          out[(horizontal ? l * ow + o : o * ow + l) * cn + c] = v < 0 ? 0 : v > 255 ? 255 : v;
        }
      }
    }
    return out;
  };
  let data = img.data;
  let w = img.width;
  if (dw !== img.width) {
    data = pass(data, img.width, img.height, true, dw);
    w = dw;
  }
  if (dh !== img.height) data = pass(data, w, img.height, false, dh);
  return { width: dw, height: dh, channels: img.channels, data };
}

/** Pillow's ImageOps.exif_transpose for orientation 1..8. */
export function applyOrientation(img: ImageU8, orientation: number): ImageU8 {
  if (!orientation || orientation === 1) return img;
  const { width: w, height: h, channels: cn, data } = img;
  const swap = orientation >= 5;
  const ow = swap ? h : w, oh = swap ? w : h;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      let sx: number, sy: number;
      switch (orientation) {
        case 2: sx = w - 1 - x; sy = y; break; // mirror
        case 3: sx = w - 1 - x; sy = h - 1 - y; break; // 180
        case 4: sx = x; sy = h - 1 - y; break; // flip vertical
        case 5: sx = y; sy = x; break; // transpose
        case 6: sx = y; sy = h - 1 - x; break; // rotate 90 clockwise to display
        case 7: sx = w - 1 - y; sy = h - 1 - x; break; // transverse
        default: sx = w - 1 - y; sy = x; break; // 8: rotate 90 counter-clockwise
      }
      for (let c = 0; c < cn; c++) out[(y * ow + x) * cn + c] = data[(sy * w + sx) * cn + c]!;
    }
  }
  return { width: ow, height: oh, channels: cn, data: out };
}

/** RGBA -> RGB composited on white, with Pillow's alpha_composite arithmetic. */
export function compositeOnWhite(data: Uint8Array | Uint8ClampedArray, w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  for (let i = 0; i < w * h; i++) {
    const a = data[i * 4 + 3]!;
    if (a === 255) {
      out.set(data.subarray(i * 4, i * 4 + 3), i * 3);
      continue;
    }
    const outa255 = a * 255 + 255 * (255 - a);
    const coef1 = Math.floor((a * 255 * 255 * 128) / outa255);
    const coef2 = 255 * 128 - coef1;
    for (let c = 0; c < 3; c++) {
      const tmp = data[i * 4 + c]! * coef1 + 255 * coef2 + (0x80 << 7);
      out[i * 3 + c] = (((tmp >> 8) + tmp) >> 8) >> 7;
    }
  }
  return out;
}

/** Accepted inputs: encoded bytes (decoded with the decoder) or an already decoded RGB/RGBA image. */
export type ImageSource = Uint8Array | ArrayBuffer | ImageU8;

/** Spec step 0: bytes -> `H x W x 3` uint8 RGB. */
export async function loadImage(source: ImageSource, decoder: ImageDecoder | null, maxSidePx = MAX_WORKING_SIDE_PX): Promise<ImageU8> {
  let img: ImageU8;
  let orientation = 1;
  if (source instanceof Uint8Array || source instanceof ArrayBuffer) {
    const bytes = source instanceof Uint8Array ? source : new Uint8Array(source);
    if (!bytes.length) throw new ImageError("image: empty input (0 bytes); pass the bytes of a JPEG/PNG photo");
    const size = peekSize(bytes);
    if (size && size.width * size.height > MAX_INPUT_PIXELS) {
      throw new ImageError(`image: ${size.width}x${size.height} is ${Math.round(size.width * size.height / 1e6)} MP, above the ${MAX_INPUT_PIXELS / 1e6} MP limit; downscale the photo first`);
    }
    if (!decoder) throw new ImageError("image: no ImageDecoder configured for encoded bytes; pass decoded pixels or use the node/browser entry point");
    let d: DecodedImage;
    try {
      d = await decoder.decode(bytes, { maxSide: maxSidePx });
    } catch (e) {
      if (e instanceof ImageError) throw e;
      throw new ImageError(`image: not a readable image or truncated/corrupt (${(e as Error)?.message ?? e}); re-export the photo (JPEG, PNG, WebP)`, { cause: e });
    }
    if (!d.width || !d.height) throw new ImageError("image: image has zero size");
    orientation = d.orientation ?? 1;
    const rgb = d.channels === 4 ? compositeOnWhite(d.data, d.width, d.height) : Uint8Array.from(d.data);
    img = { width: d.width, height: d.height, channels: 3, data: rgb };
  } else {
    const s = source;
    if (!s || !s.width || !s.height || (s.channels !== 3 && s.channels !== 4) || s.data.length !== s.width * s.height * s.channels) {
      throw new ImageError(`array image ${s?.width}x${s?.height}x${s?.channels}: expected HxWx3 (or HxWx4) uint8 RGB with matching data length`);
    }
    if (s.width * s.height > MAX_INPUT_PIXELS) throw new ImageError(`image ${s.width}x${s.height} is above the ${MAX_INPUT_PIXELS / 1e6} MP limit; downscale the photo first`);
    const data = s.channels === 3 ? s.data : Uint8Array.from({ length: s.width * s.height * 3 }, (_, i) => s.data[Math.floor(i / 3) * 4 + (i % 3)]!);
    img = { width: s.width, height: s.height, channels: 3, data };
  }
  img = applyOrientation(img, orientation);
  if (Math.max(img.width, img.height) > maxSidePx) {
    const [tw, th] = thumbnailSize(img.width, img.height, maxSidePx);
    img = pillowBilinear(img, tw, th);
  }
  return img;
}
