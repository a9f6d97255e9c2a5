// Per-photo latency of the TypeScript SDK in Node, for benchmarks/bench_sdk_latency.py. The photos' bytes are read
// into memory first; each `recognize` is timed from those bytes to the top-5 (jpeg-js decode included; the SDK's own
// `timingsMs.decode` gives the decode alone), onnxruntime-node with 1 intra-op and 1 inter-op thread, after untimed
// warm-up calls. Uses the built dist/node entry (`npm run build`). Prints one JSON object on stdout.
//
//   node scripts/bench.mjs --models ../models/release --pack sample.pack --photos photos.txt [--root ..] [--warmup 5] [--passes 1]
//
// photos.txt: one photo path per line (relative to --root).
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";

import { recognizerFromDir } from "../dist/node/index.js";

const argv = process.argv.slice(2);
const opts = {};
for (let i = 0; i < argv.length; i += 2) opts[argv[i].replace(/^--/, "")] = argv[i + 1];
for (const k of ["models", "pack", "photos"]) if (!opts[k]) throw new Error(`--${k} is required`);
const root = opts.root ?? ".";
const warmup = Number(opts.warmup ?? 5);
const passes = Number(opts.passes ?? 1);
const names = readFileSync(opts.photos, "utf8").split("\n").map((s) => s.trim()).filter(Boolean);

const loadStart = performance.now();
const rec = await recognizerFromDir(opts.models, { numThreads: 1, pack: opts.pack });
const loadMs = performance.now() - loadStart;
const bytes = names.map((n) => new Uint8Array(readFileSync(join(root, n))));

for (let i = 0; i < warmup; i++) await rec.recognize(bytes[i % bytes.length], 5);
const photos = names.map((file) => ({ file, top5: null, unknown: null, total_ms: [], decode_ms: [], stages_ms: [] }));
for (let pass = 0; pass < passes; pass++) {
  for (let i = 0; i < names.length; i++) {
    const t0 = performance.now();
    const r = await rec.recognize(bytes[i], 5);
    const t1 = performance.now();
    const p = photos[i];
    p.total_ms.push(t1 - t0);
    p.decode_ms.push(r.timingsMs.decode);
    p.stages_ms.push(r.timingsMs);
    if (pass === 0) {
      p.top5 = r.matches.map((m) => [m.coinId, m.score]);
      p.unknown = r.unknown;
    }
  }
}
let ortVersion = null;
try {
  ortVersion = JSON.parse(readFileSync(new URL("../node_modules/onnxruntime-node/package.json", import.meta.url), "utf8")).version;
} catch {}
process.stdout.write(JSON.stringify({
  sdk: "typescript", runtime: "onnx", ort: `onnxruntime-node ${ortVersion}`, ort_threads: { intra_op: 1, inter_op: 1 },
  node: process.version, available_processors: availableParallelism(), decoder: "jpeg-js (NodeImageDecoder)",
  uv_threadpool_size: process.env.UV_THREADPOOL_SIZE ?? null, load_ms: loadMs, warmup, passes, photos,
}) + "\n");
