/** Loading the release models from a folder in Node: `<kind>.onnx` + `<kind>.onnx.meta.json`, on onnxruntime-node. */
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

import { ConfigError, ModelLoadError } from "../core/errors.js";
import { parseMetadata } from "../core/meta.js";
import type { Pack } from "../core/pack.js";
import { type LoadedModel, Recognizer, type RecognizerOptions, Segmenter } from "../core/recognizer.js";
import { type OrtModule, OrtModel } from "../core/runtime.js";
import { NodeImageDecoder } from "./decoder.js";

async function ortNode(): Promise<OrtModule> {
  try {
    const mod: any = await import("onnxruntime-node");
    return (mod.default ?? mod) as OrtModule;
  } catch (e) {
    throw new ModelLoadError(`the onnxruntime-node package is not installed (${(e as Error).message}); npm install onnxruntime-node`, { cause: e });
  }
}

/** `<dir>/<kind>.onnx` with its sidecar metadata, opened on onnxruntime-node. */
export async function loadModel(modelsDir: string, kind: "segmenter" | "embedder", options: { numThreads?: number; ort?: OrtModule } = {}): Promise<LoadedModel> {
  if (!existsSync(modelsDir) || !statSync(modelsDir).isDirectory()) {
    throw new ModelLoadError(`models folder ${modelsDir} does not exist; pass the folder holding segmenter.onnx and embedder.onnx (the release exports are in models/release)`);
  }
  const path = join(modelsDir, `${kind}.onnx`);
  if (!existsSync(path)) throw new ModelLoadError(`${path}: the ${kind} model for runtime 'onnx' is missing; export it with \`coinvision export\``);
  const metaPath = `${path}.meta.json`;
  if (!existsSync(metaPath)) throw new ModelLoadError(`${path}: metadata file ${kind}.onnx.meta.json is missing; re-run coinvision export`);
  const meta = parseMetadata(readFileSync(metaPath, "utf8"), metaPath);
  if (meta.runtimeFormat && meta.runtimeFormat !== "onnx") {
    throw new ModelLoadError(`${path}: its metadata describes a ${JSON.stringify(meta.runtimeFormat)} model, not 'onnx'; re-export the model so the sidecar .meta.json belongs to this file`);
  }
  const runtime = await OrtModel.create(options.ort ?? (await ortNode()), path, { numThreads: options.numThreads, where: path });
  return { meta, runtime, where: path };
}

export interface FromDirOptions extends Omit<RecognizerOptions, "pack"> {
  /** Only "onnx" runs here (TFLite / Core ML: implement ModelRuntime on the phone). */
  runtime?: string;
  numThreads?: number;
  pack?: Pack | Uint8Array | string;
}

/** `Recognizer` from a models folder (segmenter.onnx, embedder.onnx + sidecars), decoding with jpeg-js/pngjs. */
export async function recognizerFromDir(modelsDir: string, options: FromDirOptions = {}): Promise<Recognizer> {
  const runtime = options.runtime ?? "onnx";
  if (runtime !== "onnx") throw new ConfigError(`runtime ${JSON.stringify(runtime)} is not supported in Node; use 'onnx' (TFLite/Core ML: implement ModelRuntime)`);
  const seg = await Segmenter.create(await loadModel(modelsDir, "segmenter", options));
  const emb = await loadModel(modelsDir, "embedder", options);
  const pack = typeof options.pack === "string" ? new Uint8Array(readFileSync(options.pack)) : options.pack;
  return Recognizer.create(seg, emb, { ...options, decoder: options.decoder ?? new NodeImageDecoder(), pack });
}
