// The app's service worker: keeps the shell, the SDK bundle and onnxruntime-web for offline use. The server puts
// its build id (a hash of these files and the models) into BUILD, so a changed file installs a new worker that
// caches afresh; the models and reference photos are cached by the page itself (with progress) and kept here.
const BUILD = "__BUILD__";
const SHELL_CACHE = `coinvision-shell-${BUILD}`;
const PAGE_CACHES = new Set(["coinvision-models", "coinvision-refs"]);
const SHELL = [
  "/app/", "/app/app.js", "/app/app.css", "/app/manifest.webmanifest", "/app/icon.svg", "/app/icon-192.png",
  "/app/icon-512.png", "/app/config.json", "/app/sdk/coinvision.js", "/app/sdk/ort.wasm.bundle.min.mjs",
  "/app/sdk/ort-wasm-simd-threaded.wasm",
];

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(SHELL_CACHE);
    await cache.addAll(SHELL.map((url) => new Request(url, { cache: "no-store" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name !== SHELL_CACHE && !PAGE_CACHES.has(name)) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== location.origin || !url.pathname.startsWith("/app/")) return;
  if (url.pathname === "/app/config.json") {
    // fresh when online (sizes, key), the cached copy offline
    event.respondWith(fetch(req).catch(() => caches.match("/app/config.json")));
    return;
  }
  // Cache first (the page URL without its #fragment or ?query is the cached shell); the network otherwise.
  event.respondWith((async () => {
    const key = req.mode === "navigate" ? "/app/" : url.pathname;
    const hit = await caches.match(key);
    return hit ?? fetch(req);
  })());
});
