/**
 * The on-device recognition pipeline, as `sdk_python/recognizer.py` and `segmenter.py`: decode -> two-pass
 * segmentation -> background-removed crop -> embedding (rotation-averaged) -> cosine search of the loaded pack ->
 * top-k or "unknown"; `recognizePair` fuses both sides of one coin. Every size, threshold and normalisation comes
 * from the models' metadata. Not re-entrant per instance: await one call before the next on the same Recognizer.
 */
import type { ImageU8, MapF32 } from "./cv.js";
import { ConfigError, ModelLoadError, PackError } from "./errors.js";
import { type ImageDecoder, type ImageSource, loadImage } from "./images.js";
import type { ModelMetadata } from "./meta.js";
import { checkDim, checkFingerprint, type CoinRecord, type Pack, readPack } from "./pack.js";
import {
  CROP_MASKS,
  coinCrop,
  type CropMask,
  DEFAULT_CROP_MARGIN_FRAC,
  DEFAULT_MARGIN_FRAC,
  DEFAULT_MIN_AREA_FRAC,
  DEFAULT_SEGMENT_THRESHOLD,
  MIN_TILE_FRAC,
  VIEWS_ALLOWED,
  meanUnitVector,
  rotationViews,
  type Segmentation,
  sigmoid,
  toModelInput,
  twoPassSegment,
} from "./preprocess.js";
import type { ModelRuntime } from "./runtime.js";

/** Used only when neither the caller nor the embedder's metadata gives a threshold (NOT calibrated). */
export const DEFAULT_UNKNOWN_THRESHOLD = 0.5;

const now = () => (globalThis.performance ?? Date).now();

/** A model file opened on a runtime, with the metadata it was exported with. */
export interface LoadedModel {
  readonly meta: ModelMetadata;
  readonly runtime: ModelRuntime;
  readonly where?: string;
}

async function predict(model: LoadedModel, square: ImageU8): Promise<Float32Array> {
  const s = model.meta.input.sizePx;
  const dims = model.meta.input.layout === "NCHW" ? [1, 3, s, s] : [1, s, s, 3];
  return model.runtime.run(toModelInput(square, model.meta.input), dims);
}

const EXPECTED_OUTPUT: Record<string, string> = { segmenter: "mask_logits", embedder: "embedding" };

function checkPipelineMetadata(model: LoadedModel, kind: "segmenter" | "embedder"): void {
  const where = model.where ?? kind;
  const meta = model.meta;
  if (meta.name !== kind) {
    throw new ModelLoadError(`${where}: its metadata says it is the ${JSON.stringify(meta.name)}, expected the ${kind}; the segmenter and embedder files may be swapped`);
  }
  if (meta.output !== EXPECTED_OUTPUT[kind]) {
    throw new ModelLoadError(`${where}: the ${kind} must output ${JSON.stringify(EXPECTED_OUTPUT[kind])}, its metadata says ${JSON.stringify(meta.output)}; re-export it with coinvision export`);
  }
  if (kind === "embedder" && !(Number.isInteger(meta.embeddingDim) && meta.embeddingDim! > 0)) {
    throw new ModelLoadError(`${where}: embedder metadata has no embedding_dim (${meta.embeddingDim}); re-export it`);
  }
  if (kind === "segmenter" && meta.threshold !== null && !(meta.threshold > 0 && meta.threshold < 1)) {
    throw new ModelLoadError(`${where}: segmenter threshold ${meta.threshold} is not a probability in (0, 1)`);
  }
}

/** Run the model once on a blank input: a model whose output does not fit its metadata fails at load time. */
async function checkModelOutput(model: LoadedModel, expected: number): Promise<void> {
  const s = model.meta.input.sizePx;
  let out: Float32Array;
  try {
    out = await predict(model, { width: s, height: s, channels: 3, data: new Uint8Array(s * s * 3) });
  } catch (e) {
    throw new ModelLoadError(`${model.where ?? model.meta.name}: running it on a ${s}x${s} input failed (${(e as Error)?.message ?? e}); its metadata (input size/layout) does not fit the model, re-export it`, { cause: e });
  }
  if (out.length !== expected) {
    throw new ModelLoadError(`${model.where ?? model.meta.name}: output has ${out.length} values, its metadata implies ${expected}; re-export the model so file and metadata agree`);
  }
}

/** How a segmenter's probability map becomes the coin mask (spec step 2); read from its metadata. */
export interface SegmenterParams {
  readonly sizePx: number;
  readonly threshold: number;
  readonly marginFrac: number;
  readonly minAreaFrac: number;
  readonly padValue: number;
  readonly splitTouching: boolean;
  readonly singlePassBoxFrac: number | null;
  readonly tileFrac: number | null;
  readonly views: number;
}

export function segmenterParamsFromMetadata(meta: ModelMetadata): SegmenterParams {
  const extra = meta.extra as Record<string, any>;
  const p: SegmenterParams = {
    sizePx: meta.input.sizePx,
    threshold: Number(meta.threshold || DEFAULT_SEGMENT_THRESHOLD),
    marginFrac: Number(extra.margin_frac ?? DEFAULT_MARGIN_FRAC),
    minAreaFrac: Number(extra.min_area_frac ?? DEFAULT_MIN_AREA_FRAC),
    padValue: meta.input.padValue,
    splitTouching: Boolean(extra.split_touching ?? false),
    singlePassBoxFrac: extra.single_pass_box_frac == null ? null : Number(extra.single_pass_box_frac),
    tileFrac: extra.tile_frac == null ? null : Number(extra.tile_frac),
    views: extra.views ?? 1,
  };
  if (!(p.threshold > 0 && p.threshold < 1)) throw new ConfigError(`segmenter threshold=${p.threshold}: must be a probability in (0, 1), e.g. 0.5`);
  if (!(p.marginFrac >= 0)) throw new ConfigError(`segmenter margin_frac=${p.marginFrac}: must be >= 0, e.g. ${DEFAULT_MARGIN_FRAC}`);
  if (!(p.minAreaFrac >= 0 && p.minAreaFrac < 1)) throw new ConfigError(`segmenter min_area_frac=${p.minAreaFrac}: must be in [0, 1), e.g. ${DEFAULT_MIN_AREA_FRAC}`);
  if (p.singlePassBoxFrac !== null && !(p.singlePassBoxFrac > 0)) {
    throw new ConfigError(`segmenter single_pass_box_frac=${extra.single_pass_box_frac}: must be a number > 0 (e.g. 0.8), or absent to always run the second pass`);
  }
  if (p.tileFrac !== null && !(p.tileFrac >= MIN_TILE_FRAC && p.tileFrac < 1)) {
    throw new ConfigError(`segmenter tile_frac=${extra.tile_frac}: must be in [${MIN_TILE_FRAC}, 1) (each tile smaller than the photo, at most 4 x 4 of them; e.g. 0.4), or absent for no tiles`);
  }
  if (!Number.isInteger(p.views) || !VIEWS_ALLOWED.includes(p.views)) {
    throw new ConfigError(`segmenter views=${JSON.stringify(extra.views)}: must be one of ${VIEWS_ALLOWED.join(", ")} (quarter turns of the second pass's crop, averaged), or absent for 1`);
  }
  return p;
}

/** A segmenter model with its parameters: photo -> mask. */
export class Segmenter {
  private constructor(
    readonly model: LoadedModel,
    readonly params: SegmenterParams,
  ) {}

  static async create(model: LoadedModel, params?: SegmenterParams): Promise<Segmenter> {
    checkPipelineMetadata(model, "segmenter");
    const p = params ?? segmenterParamsFromMetadata(model.meta);
    await checkModelOutput(model, p.sizePx * p.sizePx);
    return new Segmenter(model, p);
  }

  get meta(): ModelMetadata {
    return this.model.meta;
  }

  /** The raw mask logits of one `sizePx` square (float32, `sizePx^2`). */
  async logits(square: ImageU8): Promise<Float32Array> {
    return predict(this.model, square);
  }

  /** `sizePx` square uint8 RGB -> coin probability map. */
  async probability(square: ImageU8): Promise<MapF32> {
    const s = this.params.sizePx;
    return { width: s, height: s, data: sigmoid(await this.logits(square)) };
  }

  /** Decoded RGB photo -> the coin mask at the photo's size (`mask` null: no coin). */
  async segment(image: ImageU8, options: { twoPass?: boolean; onPass?: (pass: number) => void } = {}): Promise<Segmentation> {
    const p = this.params;
    return twoPassSegment(image, (sq) => this.probability(sq), {
      sizePx: p.sizePx, threshold: p.threshold, marginFrac: p.marginFrac, minAreaFrac: p.minAreaFrac,
      padValue: p.padValue, twoPass: options.twoPass ?? true, splitTouching: p.splitTouching,
      singlePassBoxFrac: p.singlePassBoxFrac, tileFrac: p.tileFrac, views: p.views, onPass: options.onPass,
    });
  }
}

/** How a photo and its mask become the embedder's input (spec steps 3-4); read from the embedder metadata. */
export interface CropParams {
  readonly cropMarginFrac: number;
  readonly backgroundRemoval: boolean;
  readonly embedRotations: number;
  readonly interpolation: "bilinear" | "area";
  readonly cropMask: CropMask; // which pixels the crop keeps: the mask's, or its "convex_hull" (fingers, coins on top)
}

export function cropParamsFromMetadata(meta: ModelMetadata): CropParams {
  const extra = meta.extra as Record<string, any>;
  const rotations = extra.embed_rotations ?? 1;
  if (!Number.isInteger(rotations) || rotations < 1 || rotations > 64) {
    throw new ModelLoadError(`embedder metadata embed_rotations=${JSON.stringify(rotations)}: must be an integer in [1, 64]; re-export the model`);
  }
  const margin = Number(extra.crop_margin_frac ?? DEFAULT_CROP_MARGIN_FRAC);
  if (!(margin >= 0)) throw new ConfigError(`crop_margin_frac=${margin}: must be >= 0, e.g. ${DEFAULT_CROP_MARGIN_FRAC}`);
  const cropMask = extra.crop_mask ?? "exact";
  if (!CROP_MASKS.includes(cropMask)) {
    throw new ModelLoadError(`embedder metadata crop_mask=${JSON.stringify(cropMask)}: must be one of ${CROP_MASKS.join(", ")}; re-export the model`);
  }
  return {
    cropMarginFrac: margin,
    backgroundRemoval: Boolean(extra.background_removal ?? true),
    embedRotations: rotations,
    interpolation: meta.input.interpolation,
    cropMask,
  };
}

/** One photo through the pipeline up to the embedder. */
export interface Embedding {
  readonly vector: Float32Array; // unit L2 norm
  readonly segmentation: Segmentation; // mask null when no coin was found (the whole photo was embedded)
  readonly image: ImageU8; // the decoded photo
  readonly crop: ImageU8; // what the embedder saw
  readonly timingsMs: Record<string, number>; // decode, segment_pass1, [segment_pass2], crop, embed, total
}

export interface Match {
  readonly coinId: string; // recognize: the pack's coin id; recognizePair: the coin group
  readonly label: string;
  readonly score: number; // cosine (recognizePair: the fused score)
  readonly record: CoinRecord | null;
}

export interface Result {
  readonly matches: Match[];
  readonly unknown: boolean;
  readonly segmentation: Segmentation; // recognizePair: the obverse photo's
  readonly timingsMs: Record<string, number>;
  readonly crop: ImageU8;
  readonly threshold: number;
  readonly sides: Embedding[];
}

/**
 * Fuse the searches of the two photos of one coin into `[group, fused score, best coin id]`, best first
 * (`recognizer.fuse_pair_scores`): group score per photo = best member score; fused = mean of the two; a group
 * missing from one list gets that list's lowest score; ties by group name.
 */
export function fusePairScores(
  obverse: readonly (readonly [string, number])[],
  reverse: readonly (readonly [string, number])[],
  groupOf: (coinId: string) => string = (c) => c,
): [string, number, string][] {
  const sides: Map<string, number>[] = [new Map(), new Map()];
  const bestMember = new Map<string, [number, string]>();
  [obverse, reverse].forEach((hits, s) => {
    for (const [coinId, score] of hits) {
      const g = groupOf(coinId);
      sides[s]!.set(g, Math.max(score, sides[s]!.get(g) ?? -Infinity));
      if (score > (bestMember.get(g)?.[0] ?? -Infinity)) bestMember.set(g, [score, coinId]);
    }
  });
  const floors = [obverse, reverse].map((hits) => (hits.length ? Math.min(...hits.map((h) => h[1])) : 0));
  const fused: [string, number, string][] = [...bestMember].map(([g, [, member]]) => [
    g, ((sides[0]!.get(g) ?? floors[0]!) + (sides[1]!.get(g) ?? floors[1]!)) / 2, member,
  ]);
  return fused.sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

function checkTopK(topK: unknown): void {
  if (!Number.isInteger(topK) || (topK as number) < 1) throw new ConfigError(`topK=${JSON.stringify(topK)}: must be an integer >= 1`);
}

export interface RecognizerOptions {
  unknownThreshold?: number;
  decoder?: ImageDecoder | null;
  pack?: Pack | Uint8Array;
}

/** Segmenter + embedder (+ an optional pack). Build with {@link Recognizer.create} (or the node/browser helpers). */
export class Recognizer {
  readonly fingerprint: string;
  readonly dim: number;
  readonly cropParams: CropParams;
  readonly unknownThreshold: number;
  private packState: { pack: Pack; records: ReadonlyMap<string, CoinRecord> } | null = null;

  private constructor(
    readonly segmenter: Segmenter,
    readonly embedder: LoadedModel,
    unknownThreshold: number | undefined,
    readonly decoder: ImageDecoder | null,
  ) {
    this.fingerprint = embedder.meta.fingerprint;
    this.dim = embedder.meta.embeddingDim!;
    this.cropParams = cropParamsFromMetadata(embedder.meta);
    const t = unknownThreshold ?? embedder.meta.threshold ?? DEFAULT_UNKNOWN_THRESHOLD;
    if (!Number.isFinite(t) || t < -1 || t > 1) throw new ConfigError(`unknownThreshold=${t}: a cosine threshold must be in [-1, 1]`);
    this.unknownThreshold = t;
  }

  /** Both models checked against their metadata (and run once on a blank input). */
  static async create(segmenter: LoadedModel | Segmenter, embedder: LoadedModel, options: RecognizerOptions = {}): Promise<Recognizer> {
    const seg = segmenter instanceof Segmenter ? segmenter : await Segmenter.create(segmenter);
    checkPipelineMetadata(embedder, "embedder");
    const rec = new Recognizer(seg, embedder, options.unknownThreshold, options.decoder ?? null);
    await checkModelOutput(embedder, rec.dim);
    if (options.pack) rec.loadPack(options.pack);
    return rec;
  }

  get segmenterMeta(): ModelMetadata {
    return this.segmenter.meta;
  }

  get embedderMeta(): ModelMetadata {
    return this.embedder.meta;
  }

  get pack(): Pack | null {
    return this.packState?.pack ?? null;
  }

  /**
   * Use `pack` (parsed, or its bytes) for {@link recognize}. Refuses (PackError subclasses) a pack that does not
   * parse or was built by another embedder; the previous pack then stays in use.
   */
  loadPack(pack: Pack | Uint8Array): void {
    const parsed = pack instanceof Uint8Array ? readPack(pack) : pack;
    checkFingerprint(parsed, this.fingerprint);
    checkDim(parsed, this.dim);
    this.packState = { pack: parsed, records: parsed.records };
  }

  private requirePack() {
    if (!this.packState) {
      throw new PackError("no pack loaded; call loadPack(PACK) or pass pack to Recognizer.create (build one with `coinvision pack build` or sync one with SyncClient)");
    }
    return this.packState;
  }

  /** Embed one (already decoded or cropped) square view set: the rotation-averaged unit vector. */
  async embedCrop(crop: ImageU8): Promise<Float32Array> {
    const views = rotationViews(crop, this.cropParams.embedRotations, this.embedder.meta.input.padValue);
    const vectors: Float32Array[] = [];
    for (const v of views) vectors.push(Float32Array.from(await predict(this.embedder, v)));
    return meanUnitVector(vectors);
  }

  /** Decode, segment twice, crop, embed. */
  async embed(image: ImageSource): Promise<Embedding> {
    const start = now();
    const rgb = await loadImage(image, this.decoder);
    const decoded = now();
    const marks: number[] = [];
    const segmentation = await this.segmenter.segment(rgb, { onPass: () => marks.push(now()) });
    const segmented = now();
    const spec = this.embedder.meta.input;
    const mask = this.cropParams.backgroundRemoval ? segmentation.mask : null;
    const crop = coinCrop(rgb, mask, spec.sizePx, {
      marginFrac: this.cropParams.cropMarginFrac, fillValue: spec.padValue, interpolation: this.cropParams.interpolation,
      cropMask: this.cropParams.cropMask,
    });
    const cropped = now();
    const vector = await this.embedCrop(crop);
    const embedded = now();
    const timingsMs: Record<string, number> = { decode: decoded - start, segment_pass1: (marks[1] ?? segmented) - decoded };
    if (marks[1] !== undefined) timingsMs.segment_pass2 = segmented - marks[1];
    Object.assign(timingsMs, { crop: cropped - segmented, embed: embedded - cropped, total: embedded - start });
    return { vector, segmentation, image: rgb, crop, timingsMs };
  }

  private match(state: { records: ReadonlyMap<string, CoinRecord> }, coinId: string, score: number, group?: string): Match {
    const record = state.records.get(coinId) ?? null;
    return { coinId: group ?? coinId, label: record?.label ?? "", score, record };
  }

  /** The `topK` best coins of the loaded pack; `unknown` when the best cosine is below the threshold. */
  async recognize(image: ImageSource, topK = 5): Promise<Result> {
    checkTopK(topK);
    const state = this.requirePack();
    const emb = await this.embed(image);
    const t0 = now();
    const matches = state.pack.search(emb.vector, topK).map(([c, s]) => this.match(state, c, s));
    const searchMs = now() - t0;
    const { total, ...stages } = emb.timingsMs;
    return {
      matches, unknown: this.isUnknown(matches), segmentation: emb.segmentation, crop: emb.crop,
      timingsMs: { ...stages, search: searchMs, total: total! + searchMs }, threshold: this.unknownThreshold, sides: [emb],
    };
  }

  /** Both sides of one coin: every coin scored on both photos, fused per coin group (mean of the two sides). */
  async recognizePair(obverse: ImageSource, reverse: ImageSource, topK = 5): Promise<Result> {
    checkTopK(topK);
    const state = this.requirePack();
    const sides = [await this.embed(obverse), await this.embed(reverse)];
    const t0 = now();
    const hits = sides.map((s) => state.pack.search(s.vector, state.pack.coinCount));
    const groupOf = (coinId: string) => state.records.get(coinId)?.extra.coin_group || coinId;
    const fused = fusePairScores(hits[0]!, hits[1]!, groupOf);
    const matches = fused.slice(0, topK).map(([g, s, member]) => this.match(state, member, s, g));
    const searchMs = now() - t0;
    const timingsMs: Record<string, number> = {};
    ["obverse", "reverse"].forEach((name, i) => {
      for (const [k, v] of Object.entries(sides[i]!.timingsMs)) timingsMs[`${name}.${k}`] = v;
    });
    timingsMs.search = searchMs;
    timingsMs.total = sides[0]!.timingsMs.total! + sides[1]!.timingsMs.total! + searchMs;
    return {
      matches, unknown: this.isUnknown(matches), segmentation: sides[0]!.segmentation, crop: sides[0]!.crop,
      timingsMs, threshold: this.unknownThreshold, sides,
    };
  }

  private isUnknown(matches: Match[]): boolean {
    return !matches.length || matches[0]!.score < this.unknownThreshold;
  }
}
