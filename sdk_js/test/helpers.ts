/** Paths and small helpers shared by the tests (run from sdk_js/, compiled to .test-build/test/). */
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const SDK_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const REPO = resolve(SDK_DIR, "..");
export const GOLDEN_PACKS = join(REPO, "tests", "golden", "packs");
export const MODELS = process.env.COINVISION_MODELS_DIR ?? join(REPO, "models", "release");
export const SAMPLES = join(REPO, "examples", "sample_coins");
export const CONFORMANCE = join(REPO, "conformance");
export const FIXTURES = join(SDK_DIR, "test", "fixtures");

export function readJson<T = any>(path: string): T {
  return JSON.parse(readFileSync(path, "utf8")) as T;
}
