/** Model metadata (`<model>.meta.json`, as `sdk_python/model_meta.py`): every pipeline parameter comes from here. */
import { ModelLoadError } from "./errors.js";
import { IMAGENET_MEAN, IMAGENET_STD, type InputSpec } from "./preprocess.js";

export const SCHEMA_VERSION = 1;

export interface ModelMetadata {
  readonly name: string; // "segmenter" | "embedder"
  readonly architecture: string;
  readonly fingerprint: string;
  readonly input: InputSpec;
  readonly output: string; // "mask_logits" | "embedding"
  readonly embeddingDim: number | null;
  readonly l2Normalized: boolean;
  readonly threshold: number | null;
  readonly runtimeFormat: string;
  readonly quantization: string;
  readonly extra: Readonly<Record<string, unknown>>;
}

function triple(v: unknown, fallback: readonly [number, number, number], what: string): [number, number, number] {
  if (v === undefined) return [...fallback];
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === "number" && Number.isFinite(x))) {
    throw new ModelLoadError(`model metadata input.${what}=${JSON.stringify(v)}: must be 3 numbers; re-export the model`);
  }
  return [v[0], v[1], v[2]];
}

/** Parse and validate the sidecar JSON (text or object). */
export function parseMetadata(source: string | Record<string, unknown>, where = "model metadata"): ModelMetadata {
  let d: any;
  try {
    d = typeof source === "string" ? JSON.parse(source) : source;
  } catch (e) {
    throw new ModelLoadError(`${where} is not valid JSON (${(e as Error).message}); re-run coinvision export`);
  }
  if (!d || typeof d !== "object") throw new ModelLoadError(`${where} is not a JSON object; re-run coinvision export`);
  const version = d.schema_version ?? SCHEMA_VERSION;
  if (version > SCHEMA_VERSION) {
    throw new ModelLoadError(`${where}: schema ${version} is newer than this SDK understands (${SCHEMA_VERSION}); upgrade @coinvision/sdk`);
  }
  const inp = d.input;
  for (const key of ["name", "architecture", "fingerprint", "output"]) {
    if (typeof d[key] !== "string") throw new ModelLoadError(`${where} is incomplete or invalid: ${key} missing; re-export the model`);
  }
  if (!inp || typeof inp !== "object" || !Number.isInteger(inp.size_px)) {
    throw new ModelLoadError(`${where} is incomplete or invalid: input.size_px missing; re-export the model`);
  }
  const interpolation = inp.interpolation ?? "bilinear";
  if (interpolation !== "bilinear" && interpolation !== "area") {
    throw new ModelLoadError(`${where}: interpolation=${JSON.stringify(interpolation)}: must be one of bilinear, area`);
  }
  if (inp.size_px < 16) throw new ModelLoadError(`${where}: size_px=${inp.size_px}: must be >= 16`);
  const layout = inp.layout ?? "NCHW";
  if (layout !== "NCHW" && layout !== "NHWC") throw new ModelLoadError(`${where}: layout=${JSON.stringify(layout)}: must be 'NCHW' or 'NHWC'`);
  if ((inp.color_order ?? "RGB") !== "RGB") throw new ModelLoadError(`${where}: color_order=${JSON.stringify(inp.color_order)}: only 'RGB' is supported`);
  return {
    name: d.name,
    architecture: d.architecture,
    fingerprint: d.fingerprint,
    input: {
      sizePx: inp.size_px,
      mean: triple(inp.mean, IMAGENET_MEAN, "mean"),
      std: triple(inp.std, IMAGENET_STD, "std"),
      colorOrder: "RGB",
      layout,
      padValue: inp.pad_value ?? 0,
      interpolation,
    },
    output: d.output,
    embeddingDim: d.embedding_dim ?? null,
    l2Normalized: Boolean(d.l2_normalized),
    threshold: d.threshold ?? null,
    runtimeFormat: d.runtime_format ?? "",
    quantization: d.quantization ?? "fp32",
    extra: Object.freeze({ ...(d.extra ?? {}) }),
  };
}
