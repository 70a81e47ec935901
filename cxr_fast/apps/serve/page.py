"""The one page `serve` shows: plain HTML, CSS and JavaScript, no external resource (works offline).

Everything the server sends about an upload is put on the page with textContent (never as HTML); the model
cards are HTML that serve.model_card_html escaped. Hooks for tests: body[data-state] is ready, busy, done or
error, and body[data-run] counts the analyses started (a newer one supersedes an older one still running);
#message holds the error text; each result's rows are tr.prob[data-class][data-prob][data-threshold].
"""
import html

from ...evaluation.card import DISCLAIMER

_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cxr_fast: try a chest X-ray model</title>
<style>
  :root { --ink: #1d2430; --muted: #5b6472; --accent: #2f6db5; --warn: #a12d1f; --line: #d9dee5; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #f6f7f9; }
  header { background: #fff; border-bottom: 1px solid var(--line); padding: 14px 24px; }
  header h1 { margin: 0 0 4px; font-size: 20px; }
  .disclaimer { margin: 6px 0; padding: 6px 10px; border-left: 4px solid var(--warn); background: #fdf1ef; color: #5c1a12; font-size: 13px; }
  main { padding: 16px 24px; max-width: 1400px; }
  #controls { display: flex; flex-wrap: wrap; gap: 16px; align-items: center; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
  #drop { border: 2px dashed #9fb3cc; border-radius: 8px; padding: 12px 18px; background: #f9fbfe; }
  #drop.over { background: #e8f0fb; border-color: var(--accent); }
  button.example { margin: 2px 4px 2px 0; padding: 4px 10px; border: 1px solid #9fb3cc; background: #fff; border-radius: 14px; cursor: pointer; font-size: 13px; }
  button.example:hover { background: #e8f0fb; }
  select { font-size: 14px; padding: 3px 6px; }
  .muted { color: var(--muted); font-size: 13px; }
  #message { margin: 12px 0; padding: 10px 14px; border: 1px solid #e3a79f; background: #fdf1ef; color: var(--warn); border-radius: 6px; font-weight: 600; }
  .warning { margin: 6px 0; padding: 6px 10px; border-left: 4px solid #c58a00; background: #fff7e0; color: #5a4100; font-size: 13px; }
  #status { margin: 10px 0; color: var(--accent); min-height: 1.4em; }
  #results { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 16px; }
  .result, .card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
  .result h2 { margin: 0 0 4px; font-size: 17px; }
  .pred { font-size: 18px; margin: 4px 0 10px; }
  .pred strong { color: var(--accent); }
  table.probs { border-collapse: collapse; margin-bottom: 10px; }
  table.probs th { text-align: left; padding: 3px 10px 3px 0; font-weight: 600; white-space: nowrap; }
  table.probs td { padding: 3px 6px; white-space: nowrap; }
  .track { position: relative; width: 240px; height: 16px; background: #e9edf2; border-radius: 3px; }
  .bar { height: 100%; background: var(--accent); border-radius: 3px; }
  tr.decided .bar { background: #1f8a4c; }
  .tick { position: absolute; top: -3px; bottom: -3px; width: 3px; background: var(--warn); }
  .value { font-variant-numeric: tabular-nums; text-align: right; min-width: 4.5em; }
  .thr { color: var(--muted); font-size: 13px; }
  .images { display: flex; flex-wrap: wrap; gap: 12px; }
  figure { margin: 0; }
  figure img { display: block; width: 256px; height: auto; border: 1px solid var(--line); background: #000; }
  figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; max-width: 256px; }
  #cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 16px; margin-top: 16px; }
  .card h3 { margin: 0 0 6px; } .card h4 { margin: 14px 0 4px; font-size: 14px; }
  .card-table { border-collapse: collapse; font-size: 13px; }
  .card-table th, .card-table td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; }
  .card ul { margin: 4px 0; padding-left: 20px; font-size: 13px; }
  .model-card-md { font-size: 13px; white-space: normal; }
  details.model-card-file { margin-top: 12px; } details.model-card-file summary { cursor: pointer; font-weight: 600; font-size: 14px; }
  pre.model-card-md { white-space: pre-wrap; }
</style>
</head>
<body data-state="loading">
<header>
  <h1>cxr_fast: try a chest X-ray model</h1>
  <p class="disclaimer" id="disclaimer">__DISCLAIMER__</p>
</header>
<main>
  <section id="controls">
    <label>Model <select id="model"></select></label>
    <div id="drop">
      <label for="file">Drop a PNG, JPEG or DICOM here, or choose one:</label>
      <input type="file" id="file" accept=".png,.jpg,.jpeg,.bmp,.tif,.tiff,.dcm,.dicom,.dic,image/*,application/dicom">
      <div class="muted" id="limits"></div>
    </div>
    <div id="examples"><span class="muted">Examples:</span></div>
  </section>
  <div id="message" role="alert" hidden></div>
  <div id="status" aria-live="polite"></div>
  <section id="results"></section>
  <section id="cards"></section>
</main>
<script>
"use strict";
let INFO = null, LAST = null, RUN = 0;
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function setState(state) { document.body.dataset.state = state; }
function showMessage(text) { const m = $("#message"); m.textContent = text || ""; m.hidden = !text; }
function pct(p) { return (100 * p).toFixed(1) + "%"; }
function mb(bytes) { return (bytes / 1048576).toFixed(1) + " MB"; }

function selectedModels() {
  const v = $("#model").value;
  return v === "all" ? INFO.models.map((_, i) => i) : [Number(v)];
}

function renderCards() {
  const cards = $("#cards");
  cards.replaceChildren();
  for (const i of selectedModels()) {
    const card = el("div", {class: "card", "data-model": String(i)});
    card.innerHTML = INFO.models[i].card;  // escaped by the server (serve.model_card_html)
    cards.append(card);
  }
}

function renderResult(r) {
  const col = el("div", {class: "result", "data-model": String(r.model)});
  col.append(el("h2", {}, r.model_name));
  if (r.warning) col.append(el("p", {class: "warning"}, "Check the input: " + r.warning + ". The model predicts it anyway."));
  col.append(el("p", {class: "pred"}, r.multilabel ? "Labels: " : "Prediction: ", el("strong", {class: "pred-value"}, r.pred)));
  const table = el("table", {class: "probs"});
  table.append(el("caption", {class: "muted"}, r.multilabel
    ? "Probability of each label; a label is given when it reaches its threshold (red tick)."
    : "Probability of each class" + (r.probs.some(p => p.threshold !== null) ? "; the red tick is the decision threshold." : ".")));
  for (const row of r.probs) {
    const bar = el("div", {class: "bar"});
    bar.style.width = pct(row.p);
    const track = el("div", {class: "track"}, bar);
    let thr = "";
    if (row.threshold !== null) {
      const tick = el("span", {class: "tick", title: "threshold " + row.threshold.toFixed(2)});
      tick.style.left = "calc(" + pct(row.threshold) + " - 1px)";
      track.append(tick);
      thr = "threshold " + row.threshold.toFixed(2);
    }
    const decided = r.multilabel ? row.p >= row.threshold : row.class === r.pred;
    const tr = el("tr", {class: "prob" + (decided ? " decided" : ""), "data-class": row.class, "data-prob": String(row.p),
                         "data-threshold": row.threshold === null ? "" : String(row.threshold)},
                  el("th", {}, row.class), el("td", {}, track), el("td", {class: "value"}, pct(row.p)), el("td", {class: "thr"}, thr));
    table.append(tr);
  }
  col.append(table);
  col.append(el("div", {class: "images"},
    el("figure", {}, el("img", {class: "image", src: r.image, alt: "the uploaded image"}),
       el("figcaption", {}, r.filename + " (" + r.format + (r.size.length ? ", " + r.size.join(" x ") + " px" : "") + ")")),
    el("figure", {}, el("img", {class: "gradcam", src: r.gradcam, alt: "Grad-CAM overlay"}),
       el("figcaption", {}, "Grad-CAM: where the evidence for " + r.gradcam_class + " lies (red: most)"))));
  col.append(el("p", {class: "muted"}, "Answered in " + r.seconds + " s." + (r.kept ? " The server kept this upload as " + r.kept + "." : " The upload was not kept.")));
  col.append(el("p", {class: "disclaimer"}, r.disclaimer));
  return col;
}

async function analyse(blob, name) {
  const run = ++RUN;  // answers of an analysis superseded by a newer one are dropped
  document.body.dataset.run = String(run);
  LAST = {blob, name};
  showMessage("");
  $("#results").replaceChildren();
  if (blob.size > INFO.max_upload_bytes) {
    showMessage(name + ": the file is " + mb(blob.size) + "; this page takes files up to " + mb(INFO.max_upload_bytes));
    setState("error");
    return;
  }
  setState("busy");
  let failed = false;
  for (const i of selectedModels()) {
    $("#status").textContent = "Analysing " + name + " with " + INFO.models[i].name + "...";
    let r;
    try {
      const resp = await fetch("api/predict?model=" + i + "&filename=" + encodeURIComponent(name),
                               {method: "POST", body: blob, headers: {"Content-Type": "application/octet-stream"}});
      r = await resp.json().catch(() => ({ok: false, error: "the server answered " + resp.status + " " + resp.statusText}));
    } catch (e) {
      r = {ok: false, error: "no answer from the server (is it still running?)"};
    }
    if (run !== RUN) return;
    if (!r.ok) { showMessage(r.error); failed = true; break; }
    $("#results").append(renderResult(r));
  }
  $("#status").textContent = "";
  setState(failed ? "error" : "done");
}

async function useExample(i) {
  setState("busy");
  const resp = await fetch("api/examples/" + i);
  if (!resp.ok) { showMessage("example " + i + " is not available"); setState("error"); return; }
  analyse(await resp.blob(), INFO.examples[i].filename);
}

async function init() {
  try {
    INFO = await (await fetch("api/models")).json();
  } catch (e) {
    showMessage("cannot reach the server");
    setState("error");
    return;
  }
  const select = $("#model");
  INFO.models.forEach((m, i) => select.append(el("option", {value: String(i)}, m.name + " (" + m.arch + ", " + m.task + ", " + m.img_size + " px)")));
  if (INFO.models.length > 1) select.append(el("option", {value: "all"}, "all models, side by side"));
  select.disabled = INFO.models.length === 1;
  select.addEventListener("change", () => { renderCards(); if (LAST) analyse(LAST.blob, LAST.name); });
  INFO.examples.forEach((example, i) => {
    const b = el("button", {type: "button", class: "example", "data-example": String(i)}, example.label);
    b.addEventListener("click", () => useExample(i));
    $("#examples").append(b);
  });
  $("#limits").textContent = "Up to " + mb(INFO.max_upload_bytes) + " and " + Math.round(INFO.max_pixels / 1e6) +
    " megapixels. " + (INFO.keeps_uploads ? "This server keeps uploads (its operator chose so)." : "Uploads are not kept after the answer.");
  const input = $("#file");
  input.addEventListener("change", () => { const f = input.files[0]; if (f) analyse(f, f.name); input.value = ""; });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    const f = e.dataTransfer.files[0]; if (f) analyse(f, f.name);
  });
  renderCards();
  setState("ready");
}
init();
</script>
</body>
</html>
"""

# the page's script is served from its own route (server: /app.js), so the content security policy allows only the
# page's own script ('self'), never inline script: a model card's HTML could not run script even if it held some
_HTML_HEAD, _, _REST = _PAGE.partition("<script>")
SCRIPT, _, _HTML_TAIL = _REST.partition("</script>")
PAGE = (_HTML_HEAD + '<script src="app.js"></script>' + _HTML_TAIL).replace("__DISCLAIMER__", html.escape(DISCLAIMER))
