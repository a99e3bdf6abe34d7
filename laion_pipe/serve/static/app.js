// The search page: builds a query from the form, shows the results, exports them.
// No framework and no build step: the page is this file, index.html and style.css.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, lastQuery: null, results: [] };
const RANGE_LABELS = { similarity: "similarity", punsafe: "punsafe", pwatermark: "pwatermark", aesthetic: "aesthetic", width: "width", height: "height" };

function message(text, kind) {
  const m = $("message");
  m.textContent = text || "";
  m.className = kind || "";
}

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  let data;
  try { data = await res.json(); } catch (e) { data = { error: `${res.status} ${res.statusText}` }; }
  if (!res.ok) throw new Error(data.error || `${res.status} ${res.statusText}`);
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function buildFilters(info) {
  const box = $("subsets");
  for (const s of info.subsets || []) {
    const id = `subset-${s}`;
    box.append(el("label", { for: id }, el("input", { type: "checkbox", id, value: s, class: "subset", checked: "" }), ` ${s}`));
  }
  const reason = $("reason");
  for (const r of info.reasons || []) reason.append(el("option", { value: r, text: r }));
  const ranges = $("ranges");
  for (const c of info.range_columns || []) {
    const span = (info.ranges || {})[c];
    const hint = span ? `${fmt(span[0])} .. ${fmt(span[1])}` : "";
    ranges.append(el("label", { class: "range" }, `${RANGE_LABELS[c] || c} `,
      el("input", { type: "number", step: "any", id: `min-${c}`, placeholder: "min", "aria-label": `${c} minimum` }),
      el("input", { type: "number", step: "any", id: `max-${c}`, placeholder: "max", "aria-label": `${c} maximum` }),
      el("span", { class: "hint", text: hint })));
  }
}

function fmt(v) {
  if (v === null || v === undefined) return "n/a";
  if (typeof v === "number") return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3);
  return String(v);
}

function currentFilters() {
  const boxes = [...document.querySelectorAll("input.subset")];
  const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
  const f = { status: $("status").value, ranges: {} };
  if (chosen.length && chosen.length < boxes.length) f.subsets = chosen;
  if (chosen.length === 0 && boxes.length) f.subsets = ["(none)"];
  if ($("reason").value) f.reasons = [$("reason").value];
  for (const c of (state.info && state.info.range_columns) || []) {
    const lo = $(`min-${c}`).value, hi = $(`max-${c}`).value;
    if (lo !== "" || hi !== "") f.ranges[c] = [lo === "" ? null : Number(lo), hi === "" ? null : Number(hi)];
  }
  return f;
}

function baseQuery() {
  const k = Math.max(1, Math.min(1000, parseInt($("k").value, 10) || 40));
  return { k, modality: $("modality").value, filters: currentFilters() };
}

async function run(query, label) {
  message(`searching ${label} ...`, "busy");
  try {
    const t0 = performance.now();
    const data = await api("/api/search", query);
    state.lastQuery = query;
    state.results = data.results;
    show(data.results);
    $("summary").textContent = `${data.results.length} results for ${data.query} (${Math.round(performance.now() - t0)} ms)`;
    $("export").disabled = data.results.length === 0;
    message("");
  } catch (e) {
    message(e.message, "error");
  }
}

function show(results) {
  const box = $("results");
  box.replaceChildren();
  for (const r of results) {
    const status = r.kept ? el("span", { class: "kept", text: "kept" }) : el("span", { class: "dropped", text: `dropped: ${r.drop_reason || "?"}` });
    const more = el("button", { type: "button", class: "more", text: "more like this" });
    more.addEventListener("click", () => {
      $("query").value = "";
      run({ ...baseQuery(), modality: "image", like: { space: r.space, id: r.id } }, `more like ${r.space}/${r.id}`);
    });
    const scores = el("dl", { class: "scores" },
      ...[["score", r.score], ["similarity", r.similarity], ["punsafe", r.punsafe], ["pwatermark", r.pwatermark], ["aesthetic", r.aesthetic]]
        .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: fmt(v) })]));
    const card = el("article", { class: "result", "data-space": r.space, "data-id": String(r.id), "data-url": r.url || "" },
      el("img", { src: r.image, alt: r.caption || "", loading: "lazy" }),
      el("p", { class: "caption", text: r.caption || "" }),
      el("p", { class: "meta" }, el("a", { href: r.url || "#", target: "_blank", rel: "noopener noreferrer", text: r.url || "" })),
      el("p", { class: "meta" }, `${r.subset} · ${r.language || "?"} · ${r.width || "?"}x${r.height || "?"} · `, status),
      scores, more);
    box.append(card);
  }
  if (!results.length) box.append(el("p", { class: "meta", text: "no results (check the filters)" }));
}

async function exportResults() {
  if (!state.lastQuery) return;
  const scope = $("export-scope").value;
  const body = { query: state.lastQuery, format: $("export-format").value, name: $("export-name").value || null };
  if (scope === "threshold") { body.min_score = Number($("export-min-score").value); body.limit = 1000000; }
  else body.limit = state.results.length;
  const out = $("export-status");
  out.replaceChildren(el("span", { text: "exporting ..." }));
  try {
    const d = await api("/api/export", body);
    const parts = [el("p", {}, `${d.count} URLs written to `, el("a", { href: d.file, id: "export-file", text: d.path }))];
    if (d.command) {
      parts.push(el("p", { text: "Apply it to the dataset (rerun select with it, then the index and the statistics):" }));
      parts.push(el("pre", { id: "export-command", text: d.command }));
    }
    out.replaceChildren(...parts);
  } catch (e) {
    out.replaceChildren(el("p", { class: "error", text: e.message }));
  }
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error("could not read the file"));
    r.readAsDataURL(file);
  });
}

async function init() {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("query").value.trim();
    if (!text) { message("type what to look for, or choose an image", "error"); return; }
    run({ ...baseQuery(), text }, JSON.stringify(text));
  });
  $("upload").addEventListener("change", async () => {
    const f = $("upload").files[0];
    if (!f) return;
    try {
      run({ ...baseQuery(), image: await readFile(f) }, f.name);
    } catch (e) { message(e.message, "error"); }
  });
  $("export").addEventListener("click", exportResults);
  try {
    const info = await api("/api/info");
    state.info = info;
    $("run").textContent = info.run + (info.spaces.length ? ` · ${info.spaces.map((s) => `${s.name}: ${s.rows} pairs (${s.kept} kept), ${s.indexes.image ? s.indexes.image.kind : "?"} index`).join("; ")}` : "");
    if (!info.report) $("report-link").classList.add("missing");
    if (info.error) message(info.error, "error");
    buildFilters(info);
  } catch (e) {
    message(e.message, "error");
  }
}

init();
