// One ES module for browsers / the PWA: dist/browser/coinvision.js (the browser entry + @noble deps). onnxruntime-web
// stays external (import map or the app's bundler supplies it with its .wasm files), so the bundle stays small.
import { build } from "esbuild";

await build({
  entryPoints: ["src/core/browser.ts"],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  outfile: "dist/browser/coinvision.js",
  external: ["onnxruntime-web"],
  minify: false,
  sourcemap: true,
  logLevel: "warning",
});
console.log("dist/browser/coinvision.js");
