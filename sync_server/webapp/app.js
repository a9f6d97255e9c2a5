// The offline phone app. Everything pipeline-related is the TypeScript SDK's browser bundle (/app/sdk/coinvision.js):
// model loading, decoding, segmentation, embedding, pack search, recognizePair, and the signed-manifest sync
// (SyncClient, IndexedDB cache). This file only downloads, stores and shows.
//
// Offline storage: the app shell, the SDK and onnxruntime-web are cached by the service worker (sw.js); the models
// and the reference thumbnails by this page in Cache Storage (with progress and a sha256 check); the pack and its
// verified manifest state by the SDK's SyncClient in IndexedDB. Settings (catalog, token, the pinned public key)
// live in localStorage.

const SETTINGS_KEY = "coinvision.app.v1";
const MODELS_CACHE = "coinvision-models";
const REFS_CACHE = "coinvision-refs";
const MODEL_BASE = "/app/models";
const TOP_K = 5;

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const c of children) node.append(c);
  return node;
};

let cv = null; // the SDK module
let ort = null; // onnxruntime-web
let recognizer = null;
let client = null;
const photos = [null, null]; // per side: Uint8Array (file bytes) or an ImageU8 (camera frame)
let cameraSide = 0;
let stream = null;

// ------------------------------------------------------------------------------------------- small helpers

function setState(state) {
  document.body.dataset.state = state;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
  if (message) setState("error");
}

function mb(bytes) {
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
}

function pct(score) {
  // cosine in [-1, 1] shown as 0-100 % (never negative), as in the maintainer app
  return `${Math.round(Math.max(0, score) * 100)} %`;
}

function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_KEY) || "null");
  } catch {
    return null;
  }
}

function saveSettings(s) {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(s));
}

function refKey(catalog, coinId) {
  return `/app/refs/${encodeURIComponent(catalog)}/${encodeURIComponent(coinId)}`;
}

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function updateNet() {
  const pill = $("#net");
  pill.textContent = navigator.onLine ? "online" : "offline";
  pill.classList.toggle("offline", !navigator.onLine);
}

async function loadSdk() {
  try {
    [cv, ort] = await Promise.all([import("/app/sdk/coinvision.js"), import("/app/sdk/ort.wasm.bundle.min.mjs")]);
  } catch (e) {
    throw new Error(`the recognition code could not be loaded (${e.message}); open the app once while online`);
  }
  // One wasm thread: threads need cross-origin isolation, and one thread keeps a phone responsive enough.
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
}

// ------------------------------------------------------------------------------------------- download

/** GET with a byte-count callback while the body streams in. */
async function fetchWithProgress(url, init, onBytes) {
  const resp = await fetch(url, init);
  if (!resp.ok) {
    const text = (await resp.text().catch(() => "")).slice(0, 300);
    throw new Error(`the server answered ${resp.status} for ${url}: ${text}`);
  }
  const reader = resp.body.getReader();
  const parts = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    loaded += value.length;
    onBytes(value.length);
  }
  const out = new Uint8Array(loaded);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

/** A fetch for the SDK that counts response bytes as they stream (SyncClient has no progress callback). */
function countingFetch(onBytes) {
  return async (input, init) => {
    const resp = await fetch(input, init);
    if (!resp.body) return resp;
    const counter = new TransformStream({
      transform(chunk, ctrl) {
        onBytes(chunk.length);
        ctrl.enqueue(chunk);
      },
    });
    return new Response(resp.body.pipeThrough(counter), { status: resp.status, statusText: resp.statusText,
                                                          headers: resp.headers });
  };
}

/** The models from Cache Storage only: loading never touches the network. */
async function cachedModelFetch(url) {
  const cache = await caches.open(MODELS_CACHE);
  const hit = await cache.match(new URL(url, location.href).pathname);
  if (!hit) throw new Error(`${url} is not downloaded; remove the downloaded data and download again`);
  return hit;
}

async function buildRecognizer() {
  return cv.recognizerFromUrl({ baseUrl: MODEL_BASE, ort, fetch: cachedModelFetch });
}

function makeClient(settings, onBytes) {
  const options = { token: settings.token, expectedFingerprint: recognizer?.fingerprint };
  if (onBytes) options.fetch = countingFetch(onBytes);
  return new cv.SyncClient(location.origin, settings.catalog, new cv.IndexedDbStorage(settings.catalog),
                           settings.publicKey, options);
}

async function fetchConfig() {
  const resp = await fetch("/app/config.json", { cache: "no-store" });
  if (!resp.ok) throw new Error(`the server answered ${resp.status} for /app/config.json`);
  return resp.json();
}

async function showDownloadSize() {
  try {
    const cfg = await fetchConfig();
    const total = cfg.models.reduce((n, m) => n + m.size, 0);
    $("#download-size").textContent = `Models: ${mb(total)}, plus the catalog and its reference photos.`;
  } catch {
    $("#download-size").textContent = "";
  }
}

/** Reference thumbnails of every coin of the catalog, for the match list offline. */
async function downloadRefs(settings, progress) {
  const auth = { Authorization: `Bearer ${settings.token}` };
  const coins = [];
  for (let offset = 0; ; offset += 1000) {
    const url = `/v1/catalogs/${encodeURIComponent(settings.catalog)}/coins?offset=${offset}&limit=1000`;
    const resp = await fetch(url, { headers: auth });
    if (!resp.ok) throw new Error(`the server answered ${resp.status} for the coin list of ${settings.catalog}`);
    const page = await resp.json();
    coins.push(...page.coins);
    if (coins.length >= page.total || !page.coins.length) break;
  }
  const cache = await caches.open(REFS_CACHE);
  let done = 0;
  for (const coin of coins) {
    if (coin.thumbnail_image_id != null) {
      const resp = await fetch(`/v1/images/${coin.thumbnail_image_id}/thumbnail`, { headers: auth });
      if (resp.ok) await cache.put(refKey(settings.catalog, coin.coin_id), resp);
    }
    progress(++done, coins.length);
  }
}

async function download(event) {
  event.preventDefault();
  showError("");
  const catalog = $("#catalog").value.trim();
  const token = $("#token").value.trim();
  const box = $("#progress-box");
  const bar = $("#progress");
  const text = $("#progress-text");
  $("#download").disabled = true;
  box.hidden = false;
  setState("downloading");
  try {
    const cfg = await fetchConfig();
    const previous = loadSettings();
    // The key is pinned at the first download: later manifests must verify with the same one.
    const publicKey = previous?.publicKey ?? cfg.public_key;
    const settings = { catalog, token, publicKey, models: {} };

    recognizer = null;
    const probe = makeClient(settings);
    const manifest = await probe.fetchManifest(); // signature, catalog, expiry checked by the SDK
    const modelBytes = cfg.models.reduce((n, m) => n + m.size, 0);
    const total = modelBytes + manifest.pack.size;
    let loaded = 0;
    const tick = (n) => {
      loaded += n;
      bar.value = Math.min(1, loaded / total);
      text.textContent = `${mb(loaded)} of ${mb(total)}`;
    };
    $("#progress-label").textContent = `Downloading models and catalog v${manifest.version} (${mb(total)})`;

    const cache = await caches.open(MODELS_CACHE);
    for (const m of cfg.models) {
      const bytes = await fetchWithProgress(m.url, { cache: "no-store" }, tick);
      const got = await sha256Hex(bytes);
      if (got !== m.sha256) throw new Error(`${m.name}: downloaded bytes do not match the server's sha256; try again`);
      const type = m.name.endsWith(".json") ? "application/json" : "application/octet-stream";
      await cache.put(m.url, new Response(bytes, { headers: { "Content-Type": type, "Content-Length": String(bytes.length) } }));
      settings.models[m.name] = m.sha256;
    }
    $("#progress-label").textContent = "Checking the models";
    recognizer = await buildRecognizer();

    $("#progress-label").textContent = `Downloading catalog v${manifest.version}`;
    client = makeClient(settings, tick);
    await client.sync(); // signed manifest, sha256 of the pack, model fingerprint: all checked by the SDK
    recognizer.loadPack(await client.loadPack());
    client = makeClient(settings);

    $("#progress-label").textContent = "Downloading reference photos";
    await downloadRefs(settings, (i, n) => {
      text.textContent = `${i} of ${n} reference photos`;
    });
    settings.version = recognizer.pack.catalogVersion;
    saveSettings(settings);
    box.hidden = true;
    showReady(settings);
  } catch (e) {
    showError(`Download failed: ${e.message}`);
    box.hidden = true;
  } finally {
    $("#download").disabled = false;
  }
}

// ------------------------------------------------------------------------------------------- start

async function showSetup() {
  $("#setup").hidden = false;
  $("#recognize").hidden = true;
  $("#footer").hidden = true;
  // A maintainer can share  /app/#catalog=ID&token=DEVICE_TOKEN  (the fragment never reaches a server).
  const params = new URLSearchParams(location.hash.slice(1));
  const s = loadSettings();
  $("#catalog").value = params.get("catalog") ?? s?.catalog ?? "";
  $("#token").value = params.get("token") ?? s?.token ?? "";
  if (location.hash) history.replaceState(null, "", location.pathname);
  await showDownloadSize();
  setState("setup");
}

function showReady(settings) {
  $("#setup").hidden = true;
  $("#recognize").hidden = false;
  $("#footer").hidden = false;
  const pack = recognizer.pack;
  $("#catalog-info").textContent =
    `Catalog ${settings.catalog}, version ${pack.catalogVersion}: ${pack.coinCount} coins. Works offline.`;
  setState("ready");
}

async function start() {
  updateNet();
  addEventListener("online", updateNet);
  addEventListener("offline", updateNet);
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/app/sw.js", { scope: "/app/" }).catch((e) => {
      showError(`Offline use is not available in this browser (${e.message})`);
    });
  }
  $("#setup-form").addEventListener("submit", download);
  wireRecognize();
  try {
    await loadSdk();
  } catch (e) {
    showError(e.message);
    return;
  }
  const settings = loadSettings();
  if (!settings) return showSetup();
  try {
    recognizer = await buildRecognizer();
    client = makeClient(settings);
    recognizer.loadPack(await client.loadPack()); // from IndexedDB, re-hashed against the verified sha256
    showReady(settings);
  } catch (e) {
    await showSetup();
    showError(`The downloaded data cannot be used (${e.message}); download it again.`);
  }
}

// ------------------------------------------------------------------------------------------- recognize

function mode() {
  return $("input[name=mode]:checked").value;
}

function wireRecognize() {
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => {
      const pair = mode() === "pair";
      $(".side[data-side='1']").hidden = !pair;
      $(".side[data-side='0'] .side-title").textContent = pair ? "Front" : "Photo";
      $(".side[data-side='1'] .side-title").textContent = "Back";
      void maybeRecognize();
    });
  }
  for (const side of document.querySelectorAll(".side")) {
    const i = Number(side.dataset.side);
    $(".file-input", side).addEventListener("change", async (ev) => {
      const file = ev.target.files[0];
      if (!file) return;
      setPhoto(i, new Uint8Array(await file.arrayBuffer()), URL.createObjectURL(file));
      ev.target.value = "";
    });
    $(".camera-btn", side).addEventListener("click", () => openCamera(i));
  }
  $("#capture").addEventListener("click", capture);
  $("#camera-cancel").addEventListener("click", closeCamera);
  $("#update").addEventListener("click", checkUpdates);
  $("#forget").addEventListener("click", forget);
}

function setPhoto(i, source, thumbUrl) {
  photos[i] = source;
  const img = $(`.side[data-side='${i}'] .side-thumb`);
  img.src = thumbUrl;
  img.alt = i ? "Back photo" : "Front photo";
  img.hidden = false;
  void maybeRecognize();
}

async function openCamera(i) {
  showError("");
  cameraSide = i;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (e) {
    showError(`The camera is not available (${e.message}); choose a photo instead.`);
    return;
  }
  const video = $("#video");
  video.srcObject = stream;
  $("#camera").hidden = false;
  await video.play();
  document.body.dataset.camera = "on";
  $("#capture").focus();
}

function closeCamera() {
  stream?.getTracks().forEach((t) => t.stop());
  stream = null;
  $("#video").srcObject = null;
  $("#camera").hidden = true;
  document.body.dataset.camera = "off";
}

function capture() {
  const video = $("#video");
  const w = video.videoWidth;
  const h = video.videoHeight;
  if (!w || !h) return showError("The camera has no picture yet; try again.");
  const canvas = el("canvas", { width: w, height: h });
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(video, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  // The frame goes to the SDK as pixels (HxWx4, alpha dropped by the SDK): no lossy re-encoding in between.
  const frame = { width: w, height: h, channels: 4, data: new Uint8Array(rgba.buffer) };
  closeCamera();
  canvas.toBlob((blob) => setPhoto(cameraSide, frame, URL.createObjectURL(blob)), "image/jpeg", 0.8);
}

let running = Promise.resolve();

function maybeRecognize() {
  // one recognition at a time, in the order asked
  running = running.then(recognizeNow, recognizeNow);
  return running;
}

async function recognizeNow() {
  if (!recognizer?.pack) return;
  const pair = mode() === "pair";
  if (!photos[0] || (pair && !photos[1])) return;
  showError("");
  setState("busy");
  $("#busy").textContent = "Recognizing…";
  try {
    const result = pair
      ? await recognizer.recognizePair(photos[0], photos[1], TOP_K)
      : await recognizer.recognize(photos[0], TOP_K);
    await showResult(result, pair);
    $("#busy").textContent = `Done in ${Math.round(result.timingsMs.total)} ms, on this phone.`;
    setState("done");
  } catch (e) {
    $("#busy").textContent = "";
    showError(`This photo cannot be recognized: ${e.message}`);
  }
}

function drawOverlay(canvas, image, mask) {
  const { width: w, height: h, data } = image;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const px = new ImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    let r = data[i * 3];
    let g = data[i * 3 + 1];
    let b = data[i * 3 + 2];
    if (mask) {
      if (mask.data[i]) {
        g = Math.round(g * 0.55 + 255 * 0.45); // the coin: tinted green
      } else {
        r = Math.round(r * 0.45); // the background: darkened
        g = Math.round(g * 0.45);
        b = Math.round(b * 0.45);
      }
    }
    px.data.set([r, g, b, 255], i * 4);
  }
  ctx.putImageData(px, 0, 0);
}

async function refUrl(catalog, coinId) {
  const cache = await caches.open(REFS_CACHE);
  const hit = await cache.match(refKey(catalog, coinId));
  return hit ? URL.createObjectURL(await hit.blob()) : null;
}

async function showResult(result, pair) {
  const settings = loadSettings();
  const best = result.matches[0];
  const verdict = $("#verdict");
  verdict.className = `verdict ${result.unknown ? "unknown" : "known"}`;
  verdict.dataset.unknown = String(result.unknown);
  verdict.dataset.coinId = best ? best.coinId : "";
  verdict.textContent = result.unknown
    ? `Unknown coin: not in this catalog (best match ${best ? pct(best.score) : "none"}, needs ${pct(result.threshold)})`
    : `${best.label || best.coinId}: ${pct(best.score)}`;
  const side = result.sides[0];
  drawOverlay($("#overlay"), side.image, result.segmentation.mask);
  $("#overlay").setAttribute("aria-label", result.segmentation.mask
    ? "The photo with the detected coin highlighted" : "The photo; no coin outline was found");
  const list = $("#matches");
  list.replaceChildren();
  for (const m of result.matches) {
    // recognizePair names coin groups; the photo is the best-scoring member's
    const photoId = m.record?.coinId ?? m.coinId;
    const url = await refUrl(settings.catalog, photoId);
    const img = url ? el("img", { src: url, alt: `Reference photo of ${m.label || m.coinId}` })
      : el("span", { className: "noimg", role: "img", ariaLabel: "no reference photo" });
    const li = el("li", {}, img,
      el("div", {}, el("div", { className: "label", textContent: m.label || m.coinId }),
        el("div", { className: "id", textContent: pair ? `group ${m.coinId}` : m.coinId })),
      el("span", { className: "score", textContent: pct(m.score) }));
    li.dataset.coinId = m.coinId;
    li.dataset.score = String(m.score);
    list.append(li);
  }
  $("#result").hidden = false;
}

// ------------------------------------------------------------------------------------------- update, forget

async function checkUpdates() {
  const settings = loadSettings();
  showError("");
  $("#busy").textContent = "Checking for a newer catalog…";
  try {
    const c = makeClient(settings);
    const r = await c.sync();
    if (r.updated) {
      recognizer.loadPack(await c.loadPack());
      await downloadRefs(settings, () => {});
      settings.version = r.version;
      saveSettings(settings);
      showReady(settings);
    }
    $("#busy").textContent = r.updated ? `Updated to version ${r.version} (${mb(r.downloadedBytes)}).`
      : `Version ${r.version} is the newest.`;
  } catch (e) {
    $("#busy").textContent = "";
    showError(`No update: ${e.message}`); // the cached catalog stays in use
  }
}

async function forget() {
  const settings = loadSettings();
  if (settings) {
    const storage = new cv.IndexedDbStorage(settings.catalog);
    for (const name of await storage.list("")) await storage.remove(name);
  }
  await caches.delete(MODELS_CACHE);
  await caches.delete(REFS_CACHE);
  localStorage.removeItem(SETTINGS_KEY);
  recognizer = null;
  $("#result").hidden = true;
  await showSetup();
}

void start();
