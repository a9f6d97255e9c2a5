/** Platform-neutral core of the coinvision SDK (no Node or DOM APIs). */
export * from "./errors.js";
export * from "./pack.js";
export * from "./cv.js";
export * from "./preprocess.js";
export * from "./meta.js";
export * from "./runtime.js";
export * from "./images.js";
export * from "./recognizer.js";
export { sha256Hex } from "./bytes.js";
export * from "./sync.js";
export { MemoryStorage } from "./memory-storage.js";
