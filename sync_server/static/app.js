// The maintainer web app: a small single-page app over the JSON API (/v1), no build step, no dependencies.
// Sign in with a maintainer token (kept in localStorage; the server sends a strict CSP), then: catalogs, coins,
// uploads, near-duplicate review, publish with a change summary, version history, and "try a photo".
// Every piece of user or server text goes into the page through textContent, never as HTML.
"use strict";

const TOKEN_KEY = "coinvision-token";
const PAGE_SIZE = 24;
const COIN_FIELDS = ["label", "country", "currency", "denomination", "side", "years"];
const IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp"];
let token = localStorage.getItem(TOKEN_KEY) || "";
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ DOM and API helpers
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function status(msg, kind = "") {
  $("status").textContent = msg;
  $("status").className = kind;
}

class ApiError extends Error {
  constructor(httpStatus, body) {
    super(body.message || `HTTP ${httpStatus}`);
    this.status = httpStatus;
    this.code = body.code || "error";
    this.detail = body.detail;
  }
}

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token }, opts.headers || {});
  const init = { method: opts.method || "GET", headers };
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.json);
  } else if (opts.form) {
    init.body = opts.form;
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { code: "network", message: "the server cannot be reached (" + e.message + "); retry" });
  }
  const body = await resp.json().catch(() => ({ message: `${resp.status} ${resp.statusText}` }));
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

const enc = encodeURIComponent;
const thumbs = new Map(); // image id -> object URL (thumbnails need the token, so <img src> cannot fetch them)

function thumb(imageId, alt, big = false) {
  const img = h("img", { class: big ? "thumb big" : "thumb", alt: alt || "", "data-image-id": imageId });
  if (imageId === null || imageId === undefined) return img;
  const known = thumbs.get(imageId);
  if (known) { img.src = known; return img; }
  fetch(`/v1/images/${imageId}/thumbnail`, { headers: { Authorization: "Bearer " + token } })
    .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(String(r.status)))))
    .then((blob) => { const url = URL.createObjectURL(blob); thumbs.set(imageId, url); img.src = url; })
    .catch(() => { img.alt = "(no thumbnail)"; });
  return img;
}

function pct(score) {
  // Cosine similarity shown as a percentage; below zero means "nothing alike", shown as 0 %.
  return `${Math.round(Math.max(0, score) * 100)} %`;
}

function fmtBytes(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} kB` : `${(n / 1048576).toFixed(1)} MB`;
}

function showError(e, where) {
  const msg = e instanceof ApiError ? e.message : String(e);
  if (where) { where.textContent = msg; where.className = "error"; }
  status(msg, "error");
}

// A confirmation dialog; with `typed`, the user must type that text (e.g. a catalog id) to enable the button.
function confirmDialog(title, text, { typed = null, okLabel = "Delete" } = {}) {
  const dlg = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  $("confirm-type-label").hidden = !typed;
  $("confirm-expected").textContent = typed || "";
  $("confirm-input").value = "";
  $("confirm-ok").disabled = Boolean(typed);
  $("confirm-input").oninput = () => { $("confirm-ok").disabled = $("confirm-input").value !== typed; };
  return new Promise((resolve) => {
    dlg.onclose = () => resolve(dlg.returnValue === "ok");
    dlg.returnValue = "cancel";
    dlg.showModal();
  });
}

// ------------------------------------------------------------------ routing
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || "") };
}

function go(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

async function route() {
  const view = $("view");
  status("");
  if (!token) { renderSignIn(view); return; }
  $("nav").hidden = false;
  const { parts, params } = parseHash();
  view.replaceChildren(h("p", {}, "Loading…"));
  try {
    if (parts.length === 0) await renderCatalogs(view);
    else if (parts[0] === "catalog" && parts[1]) await renderCatalog(view, parts[1], parts.slice(2), params);
    else renderNotFound(view);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) { signOut(e.message); return; }
    view.replaceChildren(h("h2", {}, "Something went wrong"), h("p", { class: "error", id: "view-error" }, e.message),
      h("p", {}, h("a", { href: "#/" }, "Back to the catalogs")));
  }
}

function renderNotFound(view) {
  view.replaceChildren(h("h2", {}, "Page not found"),
    h("p", {}, "There is no such page in this app. "), h("a", { href: "#/" }, "Back to the catalogs"));
}

// ------------------------------------------------------------------ sign in
function renderSignIn(view, message = "") {
  $("nav").hidden = true;
  const err = h("p", { id: "signin-error", class: message ? "error" : "" }, message);
  const input = h("input", { id: "token", type: "password", size: 48, placeholder: "cv_…", required: true,
    autocomplete: "off" });
  const form = h("form", { id: "signin", onsubmit: async (ev) => {
    ev.preventDefault();
    token = input.value.trim();
    try {
      await api("/v1/catalogs");
    } catch (e) {
      token = "";
      err.textContent = e.status === 401 ? "This token is not valid (wrong, revoked or expired): " + e.message
        : e.message;
      err.className = "error";
      return;
    }
    localStorage.setItem(TOKEN_KEY, token);
    route(); // the page that was asked for (a bookmarked catalog, say), or the catalogs
  } }, h("label", {}, "Maintainer token", input), h("button", { type: "submit" }, "Sign in"));
  view.replaceChildren(h("h2", {}, "Sign in"),
    h("p", {}, "Paste the maintainer token an operator created for you with ",
      h("code", {}, "coinvision token create --scope maintainer"), ". It stays in this browser until you sign out."),
    form, err);
  input.focus();
}

function signOut(message = "") {
  token = "";
  localStorage.removeItem(TOKEN_KEY);
  for (const url of thumbs.values()) URL.revokeObjectURL(url);
  thumbs.clear();
  history.replaceState(null, "", "#/");
  renderSignIn($("view"), message);
}

// ------------------------------------------------------------------ catalogs
async function renderCatalogs(view) {
  const data = await api("/v1/catalogs");
  const idInput = h("input", { id: "new-catalog-id", required: true, pattern: "[a-z0-9][a-z0-9_\\-]{0,63}",
    placeholder: "euro", title: "a-z, 0-9, - and _; apps use it, it cannot change later" });
  const nameInput = h("input", { id: "new-catalog-name", placeholder: "Euro coins" });
  const createErr = h("p", { id: "create-catalog-error" });
  const create = h("form", { id: "create-catalog", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const c = await api("/v1/catalogs", { method: "POST",
        json: { id: idInput.value.trim(), name: nameInput.value.trim() || idInput.value.trim() } });
      status(`Catalog ${c.name} created. Upload photos to add coins.`, "ok");
      go(`#/catalog/${enc(c.id)}/upload`);
    } catch (e) { showError(e, createErr); }
  } }, h("label", {}, "Id", idInput), h("label", {}, "Name", nameInput),
  h("button", { type: "submit" }, "Create catalog"));

  const rows = data.catalogs.map((c) => h("tr", { "data-catalog": c.id },
    h("td", {}, h("a", { href: `#/catalog/${enc(c.id)}`, class: "catalog-link" }, c.name)),
    h("td", {}, h("code", {}, c.id)), h("td", {}, c.coin_count),
    h("td", {}, c.latest_version === null ? "not published" : `v${c.latest_version}`),
    h("td", {}, h("button", { class: "secondary rename", type: "button", onclick: () => renameCatalog(c) }, "Rename"),
      " ", h("button", { class: "danger delete", type: "button", onclick: () => deleteCatalog(c) }, "Delete"))));
  view.replaceChildren(
    h("h2", {}, "Catalogs"),
    data.catalogs.length ? h("table", { id: "catalogs" },
      h("thead", {}, h("tr", {}, ...["Name", "Id", "Coins", "Published", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows))
      : h("p", { class: "empty", id: "catalogs-empty" },
        "No catalogs yet. Create the first one below: a short id that apps will use, and a name for people."),
    h("h3", {}, "New catalog"), create, createErr);
}

async function renameCatalog(c) {
  const row = document.querySelector(`tr[data-catalog="${CSS.escape(c.id)}"]`);
  const input = h("input", { class: "rename-input", value: c.name, required: true });
  const form = h("form", { class: "rename-form", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await api(`/v1/catalogs/${enc(c.id)}`, { method: "PATCH", json: { name: input.value.trim() } });
      status(`Renamed to ${input.value.trim()}.`, "ok");
      route();
    } catch (e) { showError(e); }
  } }, input, " ", h("button", { type: "submit" }, "Save"), " ",
  h("button", { type: "button", class: "secondary", onclick: () => route() }, "Cancel"));
  row.firstChild.replaceChildren(form);
  input.focus();
}

async function deleteCatalog(c) {
  const ok = await confirmDialog(`Delete catalog ${c.name}?`,
    `This removes its ${c.coin_count} coin(s), their photos and every published version from the server. ` +
    "Phones keep the pack they already have but will get no updates.", { typed: c.id });
  if (!ok) return;
  try {
    await api(`/v1/catalogs/${enc(c.id)}?confirm=${enc(c.id)}`, { method: "DELETE" });
    status(`Catalog ${c.name} deleted.`, "ok");
    route();
  } catch (e) { showError(e); }
}

// ------------------------------------------------------------------ one catalog: tabs
const TABS = [["", "Coins"], ["upload", "Upload"], ["review", "Review"], ["publish", "Publish"],
  ["versions", "Versions"], ["try", "Try a photo"]];

async function renderCatalog(view, id, rest, params) {
  const cat = await api(`/v1/catalogs/${enc(id)}`);
  const tab = rest[0] === "coin" ? "" : rest[0] || "";
  const nav = h("nav", { class: "tabs" }, TABS.map(([slug, label]) => h("a", {
    href: `#/catalog/${enc(id)}${slug ? "/" + slug : ""}`, class: slug === tab ? "active" : "", id: `tab-${slug || "coins"}`,
  }, label)));
  const body = h("section", { id: "tab-body" });
  view.replaceChildren(h("p", {}, h("a", { href: "#/" }, "Catalogs"), " / "),
    h("h2", { id: "catalog-title" }, cat.name, " ", h("code", {}, cat.id)), nav, body);
  if (rest[0] === "coin" && rest[1]) await renderCoin(body, cat, rest[1]);
  else if (tab === "") await renderCoins(body, cat, params);
  else if (tab === "upload") renderUpload(body, cat);
  else if (tab === "review") await renderReview(body, cat);
  else if (tab === "publish") await renderPublish(body, cat);
  else if (tab === "versions") renderVersions(body, cat);
  else if (tab === "try") renderTry(body, cat);
  else renderNotFound(body);
}

// ------------------------------------------------------------------ coins list
async function renderCoins(body, cat, params) {
  const q = params.get("q") || "";
  const page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
  const data = await api(`/v1/catalogs/${enc(cat.id)}/coins?q=${enc(q)}&offset=${(page - 1) * PAGE_SIZE}&limit=${PAGE_SIZE}`);
  const search = h("input", { id: "coin-search", type: "search", value: q, placeholder: "id, label, country…" });
  const form = h("form", { id: "coin-search-form", onsubmit: (ev) => {
    ev.preventDefault();
    go(`#/catalog/${enc(cat.id)}?q=${enc(search.value.trim())}`);
  } }, h("label", { class: "inline" }, "Search", search), h("button", { type: "submit" }, "Search"));
  const link = (p) => `#/catalog/${enc(cat.id)}?q=${enc(q)}&page=${p}`;
  const last = Math.max(1, Math.ceil(data.total / PAGE_SIZE));
  const from = data.total ? (page - 1) * PAGE_SIZE + 1 : 0;
  const pager = h("div", { class: "pager", id: "pager" },
    h("button", { type: "button", class: "secondary", id: "prev-page", disabled: page <= 1, onclick: () => go(link(page - 1)) }, "← Previous"),
    h("span", { id: "page-info" }, `${from}–${Math.min(data.total, page * PAGE_SIZE)} of ${data.total}`),
    h("button", { type: "button", class: "secondary", id: "next-page", disabled: page >= last, onclick: () => go(link(page + 1)) }, "Next →"));
  let content;
  if (!data.total && !q) {
    content = h("p", { class: "empty", id: "coins-empty" }, "No coins yet. ",
      h("a", { href: `#/catalog/${enc(cat.id)}/upload` }, "Upload photos"),
      ": each coin is created with its first photo, and you can fix its label afterwards.");
  } else if (!data.total) {
    content = h("p", { class: "empty", id: "coins-empty" }, `No coin matches “${q}”.`);
  } else {
    content = h("table", { id: "coins" },
      h("thead", {}, h("tr", {}, ...["", "Coin", "Label", "Country", "Denomination", "Side", "Group", "Photos"]
        .map((t) => h("th", {}, t)))),
      h("tbody", {}, data.coins.map((c) => h("tr", { "data-coin": c.coin_id },
        h("td", {}, thumb(c.thumbnail_image_id, c.label || c.coin_id)),
        h("td", {}, h("a", { href: `#/catalog/${enc(cat.id)}/coin/${enc(c.coin_id)}`, class: "coin-link" }, c.coin_id)),
        h("td", { class: "coin-label" }, c.label), h("td", {}, c.country), h("td", {}, c.denomination),
        h("td", {}, c.side), h("td", {}, (c.extra || {}).coin_group || ""), h("td", {}, c.image_count)))));
  }
  body.replaceChildren(form, content, data.total > PAGE_SIZE ? pager : "");
}

// ------------------------------------------------------------------ one coin: edit, photos, delete
async function renderCoin(body, cat, coinId) {
  const coin = await api(`/v1/catalogs/${enc(cat.id)}/coins/${enc(coinId)}`);
  const inputs = {};
  for (const f of [...COIN_FIELDS, "coin_group"]) {
    const value = f === "coin_group" ? (coin.extra || {}).coin_group || "" : coin[f] || "";
    inputs[f] = h("input", { id: `coin-${f}`, name: f, value });
  }
  const msg = h("p", { id: "coin-message" });
  const form = h("form", { id: "coin-form", onsubmit: async (ev) => {
    ev.preventDefault();
    // Send only what the maintainer changed: a field left as it was is never rewritten.
    const changes = {};
    for (const f of COIN_FIELDS) if (inputs[f].value.trim() !== (coin[f] || "")) changes[f] = inputs[f].value.trim();
    const group = inputs.coin_group.value.trim();
    if (group !== ((coin.extra || {}).coin_group || "")) {
      const extra = Object.assign({}, coin.extra || {});
      if (group) extra.coin_group = group; else delete extra.coin_group;
      changes.extra = extra;
    }
    if (!Object.keys(changes).length) { msg.textContent = "Nothing changed."; msg.className = ""; return; }
    try {
      const saved = await api(`/v1/catalogs/${enc(cat.id)}/coins/${enc(coinId)}`, { method: "PUT", json: changes });
      Object.assign(coin, saved);
      msg.textContent = `Saved ${Object.keys(changes).join(", ")}.`;
      msg.className = "ok";
    } catch (e) { showError(e, msg); }
  } },
  h("fieldset", {}, h("legend", {}, "Coin ", h("code", {}, coin.coin_id)),
    h("label", {}, "Label", inputs.label), h("label", {}, "Country", inputs.country),
    h("label", {}, "Currency", inputs.currency), h("label", {}, "Denomination", inputs.denomination),
    h("label", {}, "Side", inputs.side), h("label", {}, "Years", inputs.years),
    h("label", {}, "Coin group (both sides of one coin)", inputs.coin_group)),
  h("button", { type: "submit", id: "coin-save" }, "Save"));

  const photos = h("div", { class: "grid", id: "coin-photos" }, coin.images.map((im) => h("figure", { "data-image": im.id },
    thumb(im.id, im.filename, true), h("figcaption", {}, im.filename, h("br"), `${im.width_px}×${im.height_px}`),
    h("button", { type: "button", class: "danger delete-photo", onclick: async () => {
      if (!await confirmDialog("Delete this photo?", `${im.filename} of ${coin.coin_id} is removed from the server.`)) return;
      try { await api(`/v1/images/${im.id}`, { method: "DELETE" }); status("Photo deleted.", "ok"); route(); } catch (e) { showError(e); }
    } }, "Delete"))));
  const add = h("input", { type: "file", id: "coin-add-photos", multiple: true, accept: IMAGE_TYPES.join(",") });
  const addResults = h("tbody");
  add.addEventListener("change", async () => {
    await uploadFiles(cat, [...add.files].map((file) => ({ file, coinId })), {}, addResults, null);
    route();
  });
  const del = h("button", { type: "button", class: "danger", id: "delete-coin", onclick: async () => {
    if (!await confirmDialog(`Delete coin ${coin.coin_id}?`, `Its ${coin.images.length} photo(s) are removed too.`)) return;
    try {
      await api(`/v1/catalogs/${enc(cat.id)}/coins/${enc(coinId)}`, { method: "DELETE" });
      status(`Coin ${coin.coin_id} deleted.`, "ok");
      go(`#/catalog/${enc(cat.id)}`);
    } catch (e) { showError(e); }
  } }, "Delete coin");
  body.replaceChildren(h("p", {}, h("a", { href: `#/catalog/${enc(cat.id)}` }, "← All coins")), form, msg,
    h("h3", {}, `Photos (${coin.images.length})`),
    coin.images.length ? photos : h("p", { class: "empty" }, "No photos: this coin is left out of published packs until it has one."),
    h("label", {}, "Add photos", add), h("table", { class: "upload-results" }, addResults), h("h3", {}, "Danger zone"), del);
}

// ------------------------------------------------------------------ upload (many files, folders, drag and drop)
const COIN_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

function folderOf(file) {
  const path = file.relativePath || file.webkitRelativePath || "";
  const parts = path.split("/").filter(Boolean);
  return parts.length >= 2 ? parts[parts.length - 2] : "";
}

async function filesFromDrop(items) {
  // Folders dropped on the page: walk them (webkitGetAsEntry), keeping each file's folder path.
  const out = [];
  async function walk(entry, prefix) {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      file.relativePath = prefix + file.name;
      out.push(file);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      let batch;
      do {
        batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        for (const e of batch) await walk(e, prefix + entry.name + "/");
      } while (batch.length);
    }
  }
  for (const item of items) {
    const entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
    if (entry) await walk(entry, ""); else if (item.getAsFile()) out.push(item.getAsFile());
  }
  return out;
}

function renderUpload(body, cat) {
  const coinInput = h("input", { id: "upload-coin-id", placeholder: "e.g. 1e-obverse", title: "letters, digits, . - _" });
  const meta = {};
  for (const f of ["label", "country", "denomination", "side", "coin_group"]) meta[f] = h("input", { id: `upload-${f}` });
  const modeOne = h("input", { type: "radio", name: "mode", value: "one", id: "mode-one", checked: true });
  const modeFolder = h("input", { type: "radio", name: "mode", value: "folder", id: "mode-folder" });
  const files = h("input", { type: "file", id: "upload-files", multiple: true, accept: IMAGE_TYPES.join(",") });
  const folder = h("input", { type: "file", id: "upload-folder", multiple: true, webkitdirectory: true });
  const chosen = [];
  const list = h("p", { id: "upload-chosen" }, "No photos chosen.");
  const progress = h("progress", { id: "upload-progress", value: 0, max: 1, hidden: true });
  const results = h("tbody", { id: "upload-results" });
  const summary = h("p", { id: "upload-summary" });
  const showChosen = () => {
    list.textContent = chosen.length ? `${chosen.length} photo(s) chosen: ` +
      chosen.slice(0, 5).map((f) => f.relativePath || f.webkitRelativePath || f.name).join(", ") +
      (chosen.length > 5 ? ", …" : "") : "No photos chosen.";
  };
  const take = (fl, fromFolder) => {
    for (const f of fl) if (IMAGE_TYPES.includes(f.type) || /\.(jpe?g|png|webp)$/i.test(f.name)) chosen.push(f);
    if (fromFolder) { modeFolder.checked = true; }
    showChosen();
  };
  for (const input of [coinInput, ...Object.values(meta)]) input.addEventListener("input", () => { modeOne.checked = true; });
  files.addEventListener("change", () => take(files.files, false));
  folder.addEventListener("change", () => take(folder.files, true));
  const drop = h("div", { id: "drop-zone" }, "Drop photos or folders here");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const dropped = await filesFromDrop([...ev.dataTransfer.items]);
    take(dropped, dropped.some((f) => folderOf(f)));
  });
  const form = h("form", { id: "upload-form", onsubmit: async (ev) => {
    ev.preventDefault();
    if (!chosen.length) { summary.textContent = "Choose photos first."; summary.className = "error"; return; }
    const byFolder = modeFolder.checked;
    const jobs = chosen.map((file) => ({ file, coinId: byFolder ? folderOf(file) : coinInput.value.trim() }));
    const bad = jobs.find((j) => !COIN_ID_RE.test(j.coinId));
    if (bad) {
      summary.textContent = byFolder ? `“${bad.file.name}” is not in a folder named like a coin id; choose a folder of folders (one per coin).`
        : "Enter the coin id these photos show (letters, digits, . - _).";
      summary.className = "error";
      return;
    }
    const fields = {};
    for (const [f, input] of Object.entries(meta)) if (input.value.trim()) fields[f] = input.value.trim();
    const done = await uploadFiles(cat, jobs, byFolder ? {} : fields, results, progress);
    summary.textContent = `${done.ok} of ${jobs.length} photo(s) uploaded` + (done.failed ? `, ${done.failed} failed (see below)` : "") + ".";
    summary.className = done.failed ? "error" : "ok";
    chosen.length = 0;
    files.value = ""; folder.value = "";
    showChosen();
  } },
  h("fieldset", {}, h("legend", {}, "Which coin?"),
    h("label", { class: "inline" }, modeOne, "All photos show one coin:"), h("label", {}, "Coin id", coinInput),
    h("label", {}, "Label", meta.label), h("label", {}, "Country", meta.country),
    h("label", {}, "Denomination", meta.denomination), h("label", {}, "Side", meta.side),
    h("label", {}, "Coin group", meta.coin_group),
    h("p", { class: "hint" }, "Empty fields leave an existing coin's data as it is."),
    h("label", { class: "inline" }, modeFolder, "A folder of folders: each folder's name is the coin id")),
  h("fieldset", {}, h("legend", {}, "Photos (JPEG, PNG, WebP)"),
    h("label", {}, "Photos", files), h("label", {}, "Or a folder", folder), drop, list),
  h("button", { type: "submit", id: "upload-button" }, "Upload"));
  body.replaceChildren(form, progress, summary,
    h("table", { class: "upload-results" }, h("thead", {}, h("tr", {}, h("th", {}, "Photo"), h("th", {}, "Coin"), h("th", {}, "Result"))), results));
}

// One request per photo, so each gets its own result; the coin is created with its first photo (never empty).
async function uploadFiles(cat, jobs, fields, results, progress) {
  let ok = 0;
  let failed = 0;
  const rows = jobs.map((j) => {
    const cell = h("td", { class: "result" }, "waiting");
    const row = h("tr", { class: "upload-row", "data-file": j.file.name }, h("td", {}, j.file.relativePath || j.file.webkitRelativePath || j.file.name),
      h("td", {}, j.coinId), cell);
    results.append(row);
    return cell;
  });
  if (progress) { progress.hidden = false; progress.max = jobs.length; progress.value = 0; }
  for (const [i, j] of jobs.entries()) {
    rows[i].textContent = "uploading…";
    const form = new FormData();
    form.append("image", j.file, j.file.name);
    form.append("create", "1");
    for (const [k, v] of Object.entries(fields)) if (k !== "coin_group") form.append(k, v);
    try {
      const res = await api(`/v1/catalogs/${enc(cat.id)}/coins/${enc(j.coinId)}/images`, { method: "POST", form });
      if (fields.coin_group && (res.coin.extra || {}).coin_group !== fields.coin_group) {
        const extra = Object.assign({}, res.coin.extra || {}, { coin_group: fields.coin_group });
        await api(`/v1/catalogs/${enc(cat.id)}/coins/${enc(j.coinId)}`, { method: "PUT", json: { extra } });
      }
      const found = res.images[0].coin_found ? "" : " (no coin found in the photo: the whole photo was used)";
      rows[i].textContent = (res.coin_created ? "uploaded, new coin" : "uploaded") + found;
      rows[i].className = "result ok";
      ok += 1;
    } catch (e) {
      rows[i].textContent = "failed: " + e.message;
      rows[i].className = "result error";
      failed += 1;
    }
    if (progress) progress.value = i + 1;
  }
  status(`${ok} uploaded, ${failed} failed`, failed ? "error" : "ok");
  return { ok, failed };
}

// ------------------------------------------------------------------ review near-duplicates
async function coinLabels(cat) {
  const data = await api(`/v1/catalogs/${enc(cat.id)}/coins?limit=1000`);
  return new Map(data.coins.map((c) => [c.coin_id, c.label]));
}

async function renderReview(body, cat) {
  const [dups, labels] = await Promise.all([api(`/v1/catalogs/${enc(cat.id)}/duplicates`), coinLabels(cat)]);
  if (!dups.pairs.length) {
    body.replaceChildren(h("p", { class: "empty", id: "review-empty" },
      `No near-duplicates: no two different coins have photos that look alike (cosine ≥ ${dups.min_cosine}). `,
      h("a", { href: `#/catalog/${enc(cat.id)}/publish` }, "Go to Publish"), "."));
    return;
  }
  const side = (coinId, imageId) => h("figure", {}, thumb(imageId, coinId, true),
    h("figcaption", {}, h("a", { href: `#/catalog/${enc(cat.id)}/coin/${enc(coinId)}` }, coinId), h("br"), labels.get(coinId) || ""),
    h("button", { type: "button", class: "danger delete-photo", onclick: async () => {
      if (!await confirmDialog("Delete this photo?", `The photo of ${coinId} is removed; the other coin keeps its photo.`)) return;
      try { await api(`/v1/images/${imageId}`, { method: "DELETE" }); status("Photo deleted.", "ok"); route(); } catch (e) { showError(e); }
    } }, "Delete this photo"));
  body.replaceChildren(
    h("p", { id: "review-intro" }, `${dups.pairs.length} pair(s) of different coins have photos that look alike ` +
      "(a photo filed under the wrong coin, or two coins the model cannot tell apart). Keep both if they are " +
      "really different coins; delete the misfiled photo otherwise."),
    h("div", { id: "pairs" }, dups.pairs.map((p) => h("div", { class: "pair" }, side(p.coin_a, p.image_a),
      h("div", { class: "similarity" }, `${pct(p.cosine)} alike`), side(p.coin_b, p.image_b)))));
}

// ------------------------------------------------------------------ publish
function changeSummary(changes) {
  const li = (n, text, ids) => (n ? h("li", {}, `${n} ${text}: `, ids.join(", ")) : null);
  const since = changes.since_version ? `since version ${changes.since_version}` : "(first version)";
  const list = h("ul", { class: "summary", id: "change-summary" },
    li(changes.added.length, "coin(s) added", changes.added),
    li(changes.removed.length, "coin(s) removed", changes.removed),
    li(changes.edited.length, "coin(s) edited", changes.edited.map((e) => `${e.coin_id} (${e.fields.join(", ")})`)),
    li(changes.photos_changed.length, "coin(s) with other photos", changes.photos_changed.map((p) => `${p.coin_id} (${p.before} → ${p.now})`)),
    li(changes.without_photos.length, "coin(s) without photos, left out", changes.without_photos));
  if (changes.unchanged) list.append(h("li", {}, `Nothing changed ${since}; publishing makes an identical new version.`));
  return [h("h3", { id: "change-title" }, `Changes ${since}`), list];
}

async function renderPublish(body, cat) {
  const [changes, dups] = await Promise.all([api(`/v1/catalogs/${enc(cat.id)}/changes`), api(`/v1/catalogs/${enc(cat.id)}/duplicates`)]);
  const summaryBox = h("div", { id: "change-box" }, changeSummary(changes));
  const strict = h("input", { type: "checkbox", id: "publish-strict" });
  const result = h("p", { id: "publish-result" });
  let key = crypto.randomUUID(); // one key per publish attempt: a retry after a lost reply makes no second version
  const button = h("button", { type: "button", id: "publish-button", onclick: async () => {
    button.disabled = true;
    result.textContent = "Publishing…";
    result.className = "";
    try {
      const v = await api(`/v1/catalogs/${enc(cat.id)}/publish`, { method: "POST", json: { strict: strict.checked },
        headers: { "Idempotency-Key": key } });
      key = crypto.randomUUID();
      result.textContent = `Published version ${v.version}: ${v.coin_count} coins, ${v.vector_count} photos, ` +
        `pack ${fmtBytes(v.pack.size)}` + (v.delta ? `, update from v${v.delta.from_version} ${fmtBytes(v.delta.size)}` : "") + ".";
      result.className = "ok";
      status(`Version ${v.version} published. Phones get it at their next sync.`, "ok");
      summaryBox.replaceChildren(...changeSummary(await api(`/v1/catalogs/${enc(cat.id)}/changes`)));
    } catch (e) {
      if (e.status !== 0) key = crypto.randomUUID(); // network error: keep the key, so "retry" is safe
      showError(e, result);
    } finally { button.disabled = false; }
  } }, "Publish");
  body.replaceChildren(summaryBox,
    dups.pairs.length ? h("p", { class: "error", id: "publish-duplicates" }, `${dups.pairs.length} near-duplicate pair(s) — `,
      h("a", { href: `#/catalog/${enc(cat.id)}/review` }, "review them"), " before publishing.")
      : h("p", { id: "publish-duplicates" }, "No near-duplicates."),
    h("label", { class: "inline" }, strict, "Refuse to publish while near-duplicates remain"), button, result);
}

// ------------------------------------------------------------------ versions
function renderVersions(body, cat) {
  if (!cat.versions.length) {
    body.replaceChildren(h("p", { class: "empty", id: "versions-empty" }, "Nothing published yet. ",
      h("a", { href: `#/catalog/${enc(cat.id)}/publish` }, "Publish"), " to make the first version phones can download."));
    return;
  }
  body.replaceChildren(h("table", { id: "versions" },
    h("thead", {}, h("tr", {}, ...["Version", "Published (UTC)", "Coins", "Photos", "Pack", "Update", "Model"].map((t) => h("th", {}, t)))),
    h("tbody", {}, [...cat.versions].reverse().map((v) => h("tr", { "data-version": v.version },
      h("td", {}, `v${v.version}`), h("td", {}, v.created_at.replace("T", " ").replace("Z", "")), h("td", {}, v.coin_count),
      h("td", {}, v.vector_count), h("td", {}, `${fmtBytes(v.pack.size)} (${v.quant})`),
      h("td", {}, v.delta ? `from v${v.delta.from_version}, ${fmtBytes(v.delta.size)}` : "full pack only"),
      h("td", {}, h("code", {}, v.model_fingerprint)))))));
}

// ------------------------------------------------------------------ try a photo
function renderTry(body, cat) {
  const file = h("input", { type: "file", id: "try-file", accept: IMAGE_TYPES.join(","), required: true });
  const overlay = h("img", { id: "overlay", alt: "what the segmenter found", hidden: true });
  const caption = h("figcaption", { id: "seg-caption" });
  const verdict = h("p", { id: "verdict", class: "verdict" });
  const matches = h("ol", { id: "matches" });
  const form = h("form", { id: "try-form", onsubmit: async (ev) => {
    ev.preventDefault();
    if (!file.files.length) return;
    const data = new FormData();
    data.append("image", file.files[0]);
    verdict.textContent = "Searching…";
    verdict.className = "verdict";
    matches.replaceChildren();
    try {
      const res = await api(`/v1/catalogs/${enc(cat.id)}/search?top_k=5&overlay=1&thumbnails=1`, { method: "POST", form: data });
      const seg = res.segmentation || {};
      if (seg.overlay) { overlay.src = seg.overlay; overlay.hidden = false; }
      caption.textContent = seg.found ? "Coin found (green)." : "No coin found: the whole photo was used.";
      const best = res.matches[0];
      const thr = res.threshold === null ? null : pct(res.threshold);
      if (res.unknown) {
        verdict.textContent = best ? `Unknown coin: the closest, ${best.label || best.coin_id}, is only ${pct(best.score)} alike` +
          (thr ? ` (below the catalog's threshold of ${thr}).` : ".") : "Unknown coin: this catalog has no photos yet.";
        verdict.className = "verdict unknown";
      } else {
        verdict.textContent = `Looks like ${best.label || best.coin_id} (${pct(best.score)} alike` + (thr ? `, threshold ${thr})` : ")");
        verdict.className = "verdict known";
      }
      for (const m of res.matches) {
        const img = h("img", { class: "thumb", alt: m.coin_id, src: m.thumbnail || null });
        matches.append(h("li", { class: "match" }, img, h("span", {}, h("a", { href: `#/catalog/${enc(cat.id)}/coin/${enc(m.coin_id)}` }, m.coin_id),
          m.label ? ` ${m.label}` : "", ` · ${pct(m.score)}`)));
      }
    } catch (e) { verdict.textContent = ""; showError(e, verdict); }
  } }, h("label", {}, "Photo of a coin", file), h("button", { type: "submit" }, "Recognize"));
  body.replaceChildren(h("p", {}, "See what phones will answer for a photo: the coin the segmenter found, the closest coins, ",
    "and “unknown” when nothing is close enough."), form,
  h("div", { class: "pair" }, h("figure", {}, overlay, caption), h("div", {}, verdict, matches)));
}

// ------------------------------------------------------------------ start
$("sign-out").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);
route();
