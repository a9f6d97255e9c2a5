/** The browser bundle (dist/browser/coinvision.js, built by `npm run build`) loads as one ES module and works. */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";
import { pathToFileURL } from "node:url";

import { GOLDEN_PACKS, SDK_DIR } from "./helpers.js";

const bundle = join(SDK_DIR, "dist", "browser", "coinvision.js");

it("browser bundle: one ES module without Node imports, exporting the SDK; reads a golden pack", { skip: !existsSync(bundle) && "run npm run build" }, async () => {
  const text = readFileSync(bundle, "utf8");
  assert.ok(!/from\s+["']node:|require\(/.test(text), "the browser bundle must not import Node modules");
  const cv = await import(pathToFileURL(bundle).href);
  for (const name of ["Recognizer", "SyncClient", "IndexedDbStorage", "BrowserImageDecoder", "recognizerFromUrl", "readPack", "PackChecksumError"]) {
    assert.ok(cv[name], name);
  }
  const pack = cv.readPack(new Uint8Array(readFileSync(join(GOLDEN_PACKS, "int8.pack"))));
  assert.equal(pack.coinCount, 6);
  assert.throws(() => cv.readPack(new Uint8Array(readFileSync(join(GOLDEN_PACKS, "bad_checksum.pack")))), cv.PackChecksumError);
});
