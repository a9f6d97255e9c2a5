/** A minimal .npy reader (little-endian, C order; uint8, int8, float32, bool). */
import { readFileSync } from "node:fs";

export interface Npy {
  dtype: string;
  shape: number[];
  data: Uint8Array | Int8Array | Float32Array;
}

export function readNpy(path: string): Npy {
  const b = readFileSync(path);
  const major = b[6]!;
  const hlen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = b.subarray(start, start + hlen).toString("latin1");
  const descr = /'descr':\s*'([^']+)'/.exec(header)![1]!;
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)![1]!.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  if (/'fortran_order':\s*True/.test(header)) throw new Error("fortran order not supported");
  const raw = b.subarray(start + hlen);
  const ab = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength);
  const map: Record<string, () => Npy["data"]> = {
    "|u1": () => new Uint8Array(ab), "|i1": () => new Int8Array(ab), "<f4": () => new Float32Array(ab), "|b1": () => new Uint8Array(ab),
  };
  if (!map[descr]) throw new Error(`dtype ${descr} not supported`);
  return { dtype: descr, shape, data: map[descr]!() };
}

/** np.unpackbits of an H*W bool mask packed row-major, MSB first. */
export function unpackBits(packed: Uint8Array, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (packed[i >> 3]! >> (7 - (i & 7))) & 1;
  return out;
}
