/** Node entry point: the core plus onnxruntime-node models, jpeg-js/pngjs decoding and a file cache for sync. */
export * from "../core/index.js";
export { NodeImageDecoder } from "./decoder.js";
export { loadModel, recognizerFromDir, type FromDirOptions } from "./models.js";
export { FileStorage } from "./storage.js";
