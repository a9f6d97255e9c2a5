// Talks to the JSON API with the token from the box (kept in localStorage); renders catalogs, upload, query.
"use strict";
const $ = (id) => document.getElementById(id);
let token = localStorage.getItem("coinvision-token") || "";
$("token").value = token;

function status(msg, isError) {
  $("status").textContent = msg;
  $("status").className = isError ? "error" : "";
}

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token }, opts.headers || {});
  const resp = await fetch(path, Object.assign({}, opts, { headers }));
  const body = await resp.json().catch(() => ({ message: resp.statusText }));
  if (!resp.ok) throw new Error(body.message || resp.statusText);
  return body;
}

async function loadCatalogs() {
  const data = await api("/v1/catalogs");
  const tbody = $("catalogs").querySelector("tbody");
  tbody.replaceChildren();
  const select = $("catalog");
  const previous = select.value;
  select.replaceChildren();
  for (const c of data.catalogs) {
    const tr = document.createElement("tr");
    for (const v of [c.id, c.name, c.coin_count, c.latest_version ?? "unpublished"]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
    select.appendChild(new Option(c.id, c.id));
  }
  if (previous) select.value = previous;
  await loadVersions();
  status(`${data.catalogs.length} catalog(s)`);
}

async function loadVersions() {
  const id = $("catalog").value;
  const list = $("versions");
  list.replaceChildren();
  if (!id) return;
  const data = await api(`/v1/catalogs/${encodeURIComponent(id)}/versions`);
  for (const v of data.versions) {
    const li = document.createElement("li");
    li.textContent = `v${v.version}: ${v.coin_count} coins, ${v.vector_count} vectors, ${v.pack.size} bytes, ${v.created_at}`;
    list.appendChild(li);
  }
  if (!data.versions.length) list.textContent = "no published version";
}

$("save-token").addEventListener("click", async () => {
  token = $("token").value.trim();
  localStorage.setItem("coinvision-token", token);
  try { await loadCatalogs(); } catch (e) { status(e.message, true); }
});
$("catalog").addEventListener("change", () => loadVersions().catch((e) => status(e.message, true)));

$("upload-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const cat = encodeURIComponent($("catalog").value);
  const coin = encodeURIComponent($("coin-id").value);
  try {
    await api(`/v1/catalogs/${cat}/coins/${coin}`, {
      method: "PUT", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label: $("coin-label").value || $("coin-id").value }),
    });
    const form = new FormData();
    form.append("image", $("upload-file").files[0]);
    const res = await api(`/v1/catalogs/${cat}/coins/${coin}/images`, { method: "POST", body: form });
    $("upload-result").textContent = `uploaded image ${res.images[0].id} for ${res.coin_id}` +
      (res.images[0].coin_found ? "" : " (no coin found: whole photo embedded)");
    await loadCatalogs();
  } catch (e) { $("upload-result").textContent = "upload failed: " + e.message; $("upload-result").className = "error"; }
});

$("query-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const cat = encodeURIComponent($("catalog").value);
  const form = new FormData();
  form.append("image", $("query-file").files[0]);
  const list = $("matches");
  list.replaceChildren();
  try {
    const res = await api(`/v1/catalogs/${cat}/search?top_k=5&overlay=1&thumbnails=1`, { method: "POST", body: form });
    const seg = res.segmentation || {};
    if (seg.overlay) { $("overlay").src = seg.overlay; $("overlay").hidden = false; }
    $("seg-caption").textContent = seg.found ? "coin found (green)" : "no coin found: whole photo used";
    for (const m of res.matches) {
      const li = document.createElement("li");
      li.className = "match";
      if (m.thumbnail) { const img = document.createElement("img"); img.src = m.thumbnail; img.alt = m.coin_id; li.appendChild(img); }
      const span = document.createElement("span");
      span.textContent = `${m.coin_id} ${m.label ? "(" + m.label + ")" : ""} score ${m.score.toFixed(3)}`;
      li.appendChild(span);
      list.appendChild(li);
    }
    status(`${res.matches.length} match(es) in ${res.search_ms} ms`);
  } catch (e) { status(e.message, true); }
});

if (token) loadCatalogs().catch((e) => status(e.message, true));
