// The page of `clipadapt serve`: label dropped images, search the index, show the model card.
// Server data is only ever written with textContent (never parsed as HTML).
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

const percent = (x) => `${(100 * x).toFixed(1)}%`;

async function fetchJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// -- labelling images -------------------------------------------------------------------
async function predict(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/") || f.type === "");
  if (!images.length) return;
  const form = new FormData();
  for (const file of images) form.append("image", file, file.name);
  $("predict-status").textContent = `labelling ${images.length} image(s)…`;
  $("predict-status").className = "";
  try {
    const { predictions } = await fetchJson("/predict", { method: "POST", body: form });
    $("predictions").replaceChildren(
      ...predictions.map((p, i) => predictionRow(p, URL.createObjectURL(images[i])))
    );
    $("predict-status").textContent = `${predictions.length} image(s) labelled`;
  } catch (err) {
    $("predict-status").textContent = `refused: ${err.message}`;
    $("predict-status").className = "error";
  }
}

function predictionRow(p, preview) {
  const flag = "ood_score" in p
    ? el("span", { className: `flag ${p.unknown ? "unknown" : "known"}`,
                   textContent: p.unknown ? "unknown" : "known class" })
    : "";
  const details = [`score ${percent(p.score)}`, `margin ${p.margin.toFixed(2)}`];
  if ("ood_score" in p) details.push(`OOD score ${p.ood_score.toPrecision(4)}`);
  const top5 = el("ol", { className: "top5" },
    p.top5.map((t) => el("li", { textContent: `${t.label} ${percent(t.score)}` })));
  return el("div", { className: `prediction${p.unknown ? " unknown" : ""}` }, [
    el("img", { src: preview, alt: p.name }),
    el("div", {}, [
      el("div", {}, [el("span", { className: "label", textContent: p.label }), flag]),
      el("div", { className: "meta", textContent: `${p.name}: ${details.join(", ")}` }),
      top5,
    ]),
  ]);
}

function setUpDrop() {
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => { e.preventDefault(); predict(e.dataTransfer.files); });
  $("files").addEventListener("change", (e) => predict(e.target.files));
}

// -- searching the index ----------------------------------------------------------------
async function search(event) {
  event.preventDefault();
  const text = $("query").value.trim();
  if (!text) return;
  $("search-status").textContent = "searching…";
  $("search-status").className = "";
  try {
    const { results } = await fetchJson("/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text, k: 12 }),
    });
    $("results").replaceChildren(...results.map((r) => el("figure", {}, [
      el("img", { src: r.thumbnail, alt: r.name, loading: "lazy" }),
      el("figcaption", { textContent: `${r.name} (${r.score.toFixed(3)})` }),
    ])));
    $("search-status").textContent = `${results.length} nearest images for “${text}”`;
  } catch (err) {
    $("search-status").textContent = `refused: ${err.message}`;
    $("search-status").className = "error";
  }
}

// -- the model card ---------------------------------------------------------------------
function cardEntries(card) {
  const entries = [
    ["method", card.method],
    ["backbone", `${card.model.spec} (image fingerprint ${card.model.image_fingerprint})`],
    ["classes", `${card.classes.length}: ${card.classes.join(", ")}`],
    ["fitted on", `${card.fewshot.shots} shots per class (seed ${card.fewshot.seed}), ` +
      `${card.fewshot.n_support} support + ${card.fewshot.n_val} validation images of ` +
      `${card.data.name}`],
    ["data fingerprint", card.data.fingerprint],
  ];
  const ev = card.evaluation;
  if (ev) {
    entries.push(["held-out test split", `${ev.n} images: ${card.method} acc1 ` +
      `${percent(ev[card.method].acc1)}, zero-shot acc1 ${percent(ev.zeroshot.acc1)}`]);
  } else {
    entries.push(["held-out test split", "none (adapted with --test-fraction 0)"]);
  }
  const u = card.unknown;
  if (u) {
    const rate = u.false_unknown_rate;
    entries.push(["unknown threshold", `${u.detector} score > ${u.threshold.toPrecision(4)}, ` +
      `set to accept ${percent(u.accept)} of ${rate.n_val} known-image scores (${u.calibrated_on}); ` +
      `expect about ${percent(rate.expected)} of known images called unknown`]);
  } else {
    entries.push(["unknown threshold", "none: the model always answers a known class"]);
  }
  entries.push(["index", card.index ? `${card.index.images} images` : "none served"]);
  entries.push(["limits", `${(card.limits.max_body_bytes / 2 ** 20).toFixed(0)} MiB per request, ` +
    `${card.limits.max_files} files, ${(card.limits.max_pixels / 1e6).toFixed(0)} megapixels per image`]);
  return entries;
}

async function showCard() {
  try {
    const card = await fetchJson("/model");
    $("card").replaceChildren(...cardEntries(card).flatMap(([k, v]) => [
      el("dt", { textContent: k }), el("dd", { textContent: v }),
    ]));
    $("summary").textContent = `${card.method} on ${card.model.spec}, ` +
      `${card.classes.length} classes` + (card.unknown ? ", with an unknown threshold" : "");
    if (!card.index) {
      $("search-form").hidden = true;
      $("search-status").textContent = "no index is served (start with --index DIR to search)";
    }
  } catch (err) {
    $("summary").textContent = `model card unavailable: ${err.message}`;
  }
}

setUpDrop();
$("search-form").addEventListener("submit", search);
showCard();
