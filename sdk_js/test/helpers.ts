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

/**
 * Rankings end to end from the JPEG bytes: another decoder moves every score a little, so coins whose reference
 * scores are within `tolScore` of each other may swap places; any other difference in the ids is a mismatch.
 * Returns the first one, or null. (Scores are checked apart from this.)
 */
export function rankingMismatch(got: [string, number][], want: [string, number][], tolScore: number): string | null {
  const wantScore = new Map(want);
  for (let k = 0; k < got.length; k++) {
    const [id, score] = got[k]!;
    const [wantId, wantAt] = want[k]!;
    if (id === wantId) continue;
    const own = wantScore.get(id) ?? score; // a coin the reference ranked below its top-k: its score here
    if (Math.abs(own - wantAt) > tolScore) return `position ${k}: ${id} where the reference has ${wantId} (${wantAt})`;
  }
  return null;
}
