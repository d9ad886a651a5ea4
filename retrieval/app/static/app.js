// vlsearch's page: text or example-image queries against /api/search, results as a thumbnail grid.
"use strict";

const $ = (id) => document.getElementById(id);
const statusLine = $("status");

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function fetchJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail
      : (body.detail || []).map((e) => `${(e.loc || []).slice(-1)[0]}: ${e.msg}`).join("; ");
    throw new Error(detail || `HTTP ${response.status}`);
  }
  return body;
}

// The library's warning about the query's words (vlsearch search prints the same on stderr).
function showWords(doc) {
  const unknown = doc.unknown_words || [];
  let text = unknown.length ? `The model does not know: ${unknown.join(", ")}.` : "";
  if (doc.meaningless) text += " It knows no word of this query, so these results are meaningless.";
  $("words").textContent = text.trim();
  $("words").hidden = !text;
}

function showResults(doc, started) {
  showWords(doc);
  const grid = $("results");
  grid.replaceChildren(...doc.results.map((hit) => {
    const card = document.createElement("a");  // textContent only: paths are never parsed as HTML
    card.className = "hit";
    card.href = `/api/images/${hit.id}`;
    card.target = "_blank";
    card.rel = "noopener";
    card.dataset.id = hit.id;
    card.dataset.path = hit.path;
    card.title = `${hit.path}\n${hit.width}×${hit.height} ${hit.format || ""}`;
    const img = document.createElement("img");
    img.src = `/api/thumbs/${hit.id}`;
    img.alt = hit.path;
    img.loading = "lazy";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    score.dataset.stage = hit.stage;  // which stage scored it: "first" (FAISS) or "rerank" (the fusion head)
    score.title = hit.stage === "rerank"
      ? `re-ranked by the model's fusion head (FAISS score ${hit.first_score.toFixed(3)})` : "FAISS score";
    const path = document.createElement("span");
    path.className = "path";
    path.textContent = hit.path;
    card.append(img, score, path);
    return card;
  }));
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  const reranked = doc.results.some((hit) => hit.stage === "rerank") ? ", re-ranked" : "";
  setStatus(doc.results.length ? `${doc.results.length} results${reranked} in ${seconds} s` : "No results.");
}

async function searchText(q) {
  const k = $("k").value;
  if (!q.trim()) { setStatus("Type what the image shows.", true); return; }
  $("example").hidden = true;
  history.replaceState(null, "", `?${new URLSearchParams({ q, k })}`);
  setStatus("Searching…");
  const started = performance.now();
  try {
    showResults(await fetchJSON(`/api/search?${new URLSearchParams({ q, k })}`), started);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function searchImage(file) {
  if (!file) return;
  $("example-img").src = URL.createObjectURL(file);
  $("example-name").textContent = `Images like ${file.name}`;
  $("example").hidden = false;
  $("q").value = "";
  history.replaceState(null, "", location.pathname);
  setStatus("Searching…");
  const form = new FormData();
  form.append("image", file);
  const started = performance.now();
  try {
    showResults(await fetchJSON(`/api/search?k=${$("k").value}`, { method: "POST", body: form }), started);
  } catch (error) {
    setStatus(error.message, true);
  }
}

$("search").addEventListener("submit", (event) => { event.preventDefault(); searchText($("q").value); });
$("file").addEventListener("change", (event) => searchImage(event.target.files[0]));
for (const type of ["dragenter", "dragover"]) {
  window.addEventListener(type, (event) => { event.preventDefault(); document.body.classList.add("dragging"); });
}
window.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) document.body.classList.remove("dragging");
});
window.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dragging");
  searchImage(event.dataTransfer.files[0]);
});

fetchJSON("/api/stats").then((stats) => {
  const model = (stats.model || "?").slice(0, 12);
  $("stats").textContent = `${stats.images} images · model ${model} · ${stats.index_type || "?"} index`;
}).catch((error) => setStatus(error.message, true));

const params = new URLSearchParams(location.search);
if (params.get("k")) $("k").value = params.get("k");
if (params.get("q")) { $("q").value = params.get("q"); searchText(params.get("q")); }
