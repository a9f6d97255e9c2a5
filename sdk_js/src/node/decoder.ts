/** The Node image decoder: jpeg-js for JPEG (EXIF orientation read here), pngjs for PNG. */
import jpeg from "jpeg-js";
import { PNG } from "pngjs";

import type { ImageU8 } from "../core/cv.js";
import { ImageError } from "../core/errors.js";
import { type DecodedImage, draftScale, exifOrientation, type ImageDecoder, peekSize, reduceBy } from "../core/images.js";

export class NodeImageDecoder implements ImageDecoder {
  async decode(bytes: Uint8Array, { maxSide }: { maxSide: number }): Promise<DecodedImage> {
    const size = peekSize(bytes);
    if (size?.format === "jpeg") {
      const d = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: 64, maxMemoryUsageInMB: 2048 });
      let img: ImageU8 = { width: d.width, height: d.height, channels: 3, data: rgbaToRgb(d.data, d.width, d.height) };
      // Pillow decodes big JPEGs at 1/2..1/8 scale (draft); a box average of the full decode stands in for it
      let draft = 1;
      if (Math.max(d.width, d.height) > maxSide) {
        const s = maxSide / Math.max(d.width, d.height);
        draft = draftScale(d.width, d.height, Math.max(1, Math.round(d.width * s)), Math.max(1, Math.round(d.height * s)));
        img = reduceBy(img, draft);
      }
      return { ...img, channels: 3, orientation: exifOrientation(bytes), draft };
    }
    if (size?.format === "png") {
      const p = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
      return { width: p.width, height: p.height, channels: 4, data: new Uint8Array(p.data.buffer, p.data.byteOffset, p.data.byteLength) };
    }
    throw new ImageError("image: not a readable image (JPEG and PNG are supported in Node; WebP through the browser decoder)");
  }
}

function rgbaToRgb(data: Uint8Array, w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  for (let i = 0; i < w * h; i++) {
    out[i * 3] = data[i * 4]!;
    out[i * 3 + 1] = data[i * 4 + 1]!;
    out[i * 3 + 2] = data[i * 4 + 2]!;
  }
  return out;
}
