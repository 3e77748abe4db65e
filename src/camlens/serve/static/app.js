// camlens serve: the page. Plain JavaScript, no build step, nothing loaded from elsewhere.
//
// The server answers POST /api/explain with each map's raw values at the layer's resolution and the
// box of the original image the model saw. The page draws each map on a canvas laid over that box, so
// the opacity slider and the raw/normalised switch need no new request.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], methods: [], blob: null, url: null, name: "image", answer: null, busy: false };

// matplotlib's "jet", segment for segment, so the page and the PNG overlays agree.
const JET = {
  r: [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
  g: [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
  b: [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]],
};
function segment(points, v) {
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1], [x1, y1] = points[i];
    if (v <= x1) return y0 + (y1 - y0) * (v - x0) / (x1 - x0);
  }
  return points[points.length - 1][1];
}
function jet(v) {
  v = Math.min(1, Math.max(0, v));
  return [segment(JET.r, v), segment(JET.g, v), segment(JET.b, v)].map((c) => Math.round(255 * c));
}

async function getJSON(url, options) {
  const r = await fetch(url, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = { detail: r.statusText }; }
  if (!r.ok) {
    const err = new Error(describeError(r.status, body));
    err.status = r.status;
    throw err;
  }
  return body;
}

function describeError(status, body) {
  let text = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  if (status === 422 && body.valid && body.valid.length) {
    const shown = body.valid.slice(0, 12).join(", ");
    text += ` (valid: ${shown}${body.valid.length > 12 ? ", ..." : ""})`;
  }
  if (status === 503) text = "The server is busy; try again in a moment.";
  return text;
}

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

// ---- choices ------------------------------------------------------------------------------------
async function init() {
  const [models, methods, samples] = await Promise.all([
    getJSON("/api/models"), getJSON("/api/methods"), getJSON("/api/samples"),
  ]);
  state.models = models.models;
  state.methods = methods.methods;
  const sel = $("model");
  for (const m of state.models) sel.add(new Option(m.name, m.name, m.default, m.default));
  const box = $("methods");
  for (const m of state.methods) {
    const label = document.createElement("label");
    label.className = "check";
    label.title = m.description;
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = m.name;
    input.name = "method";
    input.checked = m.name === "gradcam";
    label.append(input, " " + m.name);
    box.append(label);
  }
  const sbox = $("samples");
  for (const s of samples.samples) {
    const b = document.createElement("button");
    b.type = "button";
    b.title = s.name;
    b.dataset.sample = s.name;
    const img = document.createElement("img");
    img.src = s.url;
    img.alt = s.name;
    b.append(img);
    b.addEventListener("click", () => useSample(s));
    sbox.append(b);
  }
  await modelChanged();
  const audit = await fetch("/api/audit/summary").then((r) => (r.ok ? r.json() : null)).catch(() => null);
  if (audit) showAudit(audit);
}

async function modelChanged() {
  const name = $("model").value;
  const model = state.models.find((m) => m.name === name);
  const info = await getJSON(`/api/layers?model=${encodeURIComponent(name)}`);
  const layer = $("layer");
  layer.innerHTML = "";
  layer.add(new Option(`automatic (${info.default})`, ""));
  for (const l of info.layers) {
    const shape = l.shape.slice(1).join("×");
    layer.add(new Option(`${l.name}  ${shape}${l.name === info.default ? "  (default)" : ""}`, l.name));
  }
  const list = $("classes");
  list.innerHTML = "";
  for (const k of [1, 2, 3, 5]) list.append(new Option(`top-${k}`));
  for (const c of model.class_names || []) list.append(new Option(c));
}

// ---- the image ----------------------------------------------------------------------------------
function useBlob(blob, name) {
  if (state.url) URL.revokeObjectURL(state.url);
  state.blob = blob;
  state.name = name.replace(/\.[^.]+$/, "") || "image";
  state.url = URL.createObjectURL(blob);
  explain();
}

async function useSample(sample) {
  const r = await fetch(sample.url);
  useBlob(await r.blob(), sample.name + ".png");
}

function selectedMethods() {
  return [...document.querySelectorAll("#methods input:checked")].map((i) => i.value);
}

function formFor(extra = {}) {
  const form = new FormData();
  form.append("file", state.blob, state.name);
  form.append("model", $("model").value);
  form.append("methods", extra.methods || selectedMethods().join(","));
  form.append("layer", $("layer").value);
  form.append("target", extra.target !== undefined ? String(extra.target) : $("target").value.trim());
  form.append("counterfactual", $("counterfactual").checked ? "true" : "false");
  return form;
}

async function explain() {
  if (!state.blob) { setStatus("Choose or drop an image first."); return; }
  if (!selectedMethods().length) { setStatus("Choose at least one method.", true); return; }
  if (state.busy) return;
  state.busy = true;
  $("run").disabled = true;
  setStatus("Explaining ...");
  const t0 = performance.now();
  try {
    const answer = await getJSON("/api/explain", { method: "POST", body: formFor() });
    state.answer = answer;
    render();
    setStatus(`${answer.maps.length} map(s) in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    state.busy = false;
    $("run").disabled = false;
  }
}

// ---- the maps -----------------------------------------------------------------------------------
function render() {
  const a = state.answer;
  if (!a) return;
  const preds = $("predictions");
  preds.innerHTML = "";
  for (const p of a.predictions) {
    const li = document.createElement("li");
    li.textContent = `${p.class} ${(100 * p.score).toFixed(1)}%`;
    preds.append(li);
  }
  const raw = $("rawmode").checked;
  const opacity = Number($("opacity").value) / 100;
  // raw mode: one scale per method, so the maps of its targets can be compared
  const scale = {};
  for (const m of a.maps) scale[m.method] = Math.max(scale[m.method] || 0, ...m.raw.flat());
  const box = $("maps");
  box.innerHTML = "";
  a.maps.forEach((m) => box.append(card(m, a, raw, opacity, scale[m.method])));
}

function card(m, a, raw, opacity, shared) {
  const el = document.createElement("div");
  el.className = "card" + (m.empty ? " empty" : "");
  el.dataset.method = m.method;
  const h = document.createElement("h3");
  h.textContent = m.label + (m.class !== null ? ` · ${m.class}` : "");
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `layer ${m.layer} (${m.shape.join("×")}) · score ${m.score.toPrecision(4)}`;
  const stage = document.createElement("div");
  stage.className = "stage";
  const img = document.createElement("img");
  img.src = state.url;
  img.alt = "the uploaded image";
  const canvas = drawMap(m.raw, raw, shared);
  canvas.style.opacity = String(opacity);
  const [x0, y0, x1, y1] = a.geometry ? a.geometry.box : [0, 0, a.image.width, a.image.height];
  const pct = (v, total) => `${(100 * v / total).toFixed(4)}%`;
  Object.assign(canvas.style, {
    left: pct(x0, a.image.width), top: pct(y0, a.image.height),
    width: pct(x1 - x0, a.image.width), height: pct(y1 - y0, a.image.height),
  });
  stage.append(img, canvas);
  if (a.geometry) {
    // grey out what the model did not see (outside its crop)
    const out = document.createElement("div");
    out.className = "outside";
    out.style.clipPath = `polygon(evenodd, 0 0, 100% 0, 100% 100%, 0 100%, 0 0, ${pct(x0, a.image.width)} ${pct(y0, a.image.height)}, ${pct(x0, a.image.width)} ${pct(y1, a.image.height)}, ${pct(x1, a.image.width)} ${pct(y1, a.image.height)}, ${pct(x1, a.image.width)} ${pct(y0, a.image.height)}, ${pct(x0, a.image.width)} ${pct(y0, a.image.height)})`;
    stage.append(out);
  }
  const bar = document.createElement("div");
  bar.className = "colorbar";
  const lo = document.createElement("span");
  const hi = document.createElement("span");
  const strip = document.createElement("span");
  strip.className = "bar";
  lo.textContent = "0";
  hi.textContent = raw ? `${shared.toPrecision(3)} (raw, shared by ${m.method})` : "1 (this map's maximum)";
  bar.append(lo, strip, hi);
  const links = document.createElement("div");
  links.className = "links";
  const png = document.createElement("a");
  png.href = m.overlay;
  png.download = `${state.name}.${m.method}${m.class !== null ? "." + m.class : ""}.png`;
  png.textContent = "PNG";
  const npz = document.createElement("a");
  npz.textContent = "npz";
  npz.addEventListener("click", () => downloadNpz(m));
  links.append(png, npz);
  el.append(h, meta, stage, bar, links);
  return el;
}

function drawMap(values, raw, shared) {
  const h = values.length, w = values[0].length;
  const flat = values.flat();
  const lo = raw ? 0 : Math.min(...flat);
  const hi = raw ? shared : Math.max(...flat);
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  canvas.className = raw ? "raw" : "smooth";
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(w, h);
  for (let i = 0; i < flat.length; i++) {
    const v = hi > lo ? (flat[i] - lo) / (hi - lo) : (hi > 0 ? 1 : 0);
    const [r, g, b] = jet(v);
    data.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(data, 0, 0);
  return canvas;
}

async function downloadNpz(m) {
  const form = formFor({ methods: m.method, target: m.target !== null ? m.target : "" });
  const r = await fetch("/api/explain.npz", { method: "POST", body: form });
  if (!r.ok) { setStatus("npz: " + (await r.json()).detail, true); return; }
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await r.blob());
  a.download = `${state.name}.${m.method}.npz`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ---- audit findings -----------------------------------------------------------------------------
function showAudit(summary) {
  $("nav-audit").hidden = false;
  $("audit").hidden = false;
  const classes = $("audit-class"), kinds = $("audit-kind");
  for (const c of summary.classes || []) classes.add(new Option(c, c));
  for (const k of summary.kinds || []) kinds.add(new Option(k, k));
  const refresh = async () => {
    const q = new URLSearchParams({ class: classes.value, kind: kinds.value });
    const data = await getJSON(`/api/audit/findings?${q}`);
    const box = $("findings");
    box.innerHTML = "";
    if (!data.findings.length) box.textContent = "No finding matches.";
    for (const f of data.findings) {
      const el = document.createElement("div");
      el.className = "finding";
      const h = document.createElement("h3");
      h.textContent = `${f.class}: ${f.kind.replaceAll("_", " ")} (${(100 * f.share).toFixed(0)}% of its images)`;
      const why = document.createElement("div");
      why.textContent = f.why || JSON.stringify(f.evidence);
      const ex = document.createElement("div");
      ex.className = "examples";
      if (f.mean_map_url) {
        const mean = document.createElement("img");
        mean.src = f.mean_map_url;
        mean.alt = `mean map of the ${f.class} images flagged`;
        mean.title = "the mean map of the images flagged";
        ex.append(mean);
      }
      for (const url of f.example_urls || []) {
        const img = document.createElement("img");
        img.src = url;
        img.alt = `example of ${f.class}`;
        ex.append(img);
      }
      el.append(h, why, ex);
      box.append(el);
    }
  };
  classes.addEventListener("change", refresh);
  kinds.addEventListener("change", refresh);
  refresh();
}

// ---- wiring -------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); explain(); });
  $("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) useBlob(f, f.name); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) useBlob(f, f.name);
  });
  $("model").addEventListener("change", async () => { await modelChanged(); if (state.blob) explain(); });
  for (const id of ["layer", "counterfactual"]) $(id).addEventListener("change", () => state.blob && explain());
  $("target").addEventListener("change", () => state.blob && explain());
  $("methods").addEventListener("change", () => state.blob && explain());
  $("opacity").addEventListener("input", () => {
    for (const c of document.querySelectorAll(".stage canvas")) c.style.opacity = String($("opacity").value / 100);
  });
  $("rawmode").addEventListener("change", render);
  init().catch((e) => setStatus("Could not load the choices: " + e.message, true));
});
