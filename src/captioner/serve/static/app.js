// captioner web page: upload a photo, show its caption and each word's attention heat-map.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  body: document.body,
  modelInfo: $("model-info"),
  dropzone: $("dropzone"),
  fileInput: $("file-input"),
  samples: $("samples"),
  sampleList: $("sample-list"),
  beam: $("beam-size"),
  beamValue: $("beam-value"),
  denoiseOption: $("denoise-option"),
  denoise: $("denoise"),
  viewToggle: $("view-toggle"),
  stage: $("stage"),
  placeholder: $("placeholder"),
  photo: $("photo"),
  overlay: $("overlay"),
  status: $("status"),
  caption: $("caption"),
  words: $("words"),
  meta: $("meta"),
  legend: $("legend"),
  kind: $("kind"),
  kindText: $("kind-text"),
  captionAnyway: $("caption-anyway"),
  searchPanel: $("search-panel"),
  searchForm: $("search-form"),
  searchQuery: $("search-query"),
  searchStatus: $("search-status"),
  searchHits: $("search-hits"),
};

const state = {
  file: null, // the Blob being captioned
  originalUrl: null, // object URL of that Blob
  result: null, // the first entry of the API's `results`
  view: "denoised", // which picture is shown when a denoised one exists
  pinned: -1, // word index chosen by click/tap (-1: none)
  shown: -1, // word index whose heat-map is drawn
  maxUploadBytes: 10 * 1024 * 1024,
  request: 0, // id of the latest request; older answers are ignored
  anyway: false, // caption even what the classifier says is not a photo
};

// ------------------------------------------------------------------ colour map (jet)
const LUT = (() => {
  const clamp = (x) => Math.min(1, Math.max(0, x));
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const v = i / 255;
    lut[i * 3] = 255 * clamp(1.5 - Math.abs(4 * v - 3));
    lut[i * 3 + 1] = 255 * clamp(1.5 - Math.abs(4 * v - 2));
    lut[i * 3 + 2] = 255 * clamp(1.5 - Math.abs(4 * v - 1));
  }
  return lut;
})();

// Opacity by attention: unseen regions stay clear, the most attended ones mostly cover.
const ALPHA = Uint8ClampedArray.from({ length: 256 }, (_, v) => (210 * v) / 255);

// ------------------------------------------------------------------ start-up
init();

function init() {
  ui.fileInput.addEventListener("change", () => {
    const file = ui.fileInput.files && ui.fileInput.files[0];
    if (file) choose(file);
  });
  for (const name of ["dragenter", "dragover"]) {
    ui.dropzone.addEventListener(name, (event) => {
      event.preventDefault();
      ui.dropzone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    ui.dropzone.addEventListener(name, () => ui.dropzone.classList.remove("dragging"));
  }
  // A photo dropped on the drop zone, or anywhere on the page, is captioned (and the browser
  // never navigates away to show it).
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) choose(file);
  });

  ui.beam.addEventListener("input", () => (ui.beamValue.textContent = ui.beam.value));
  ui.beam.addEventListener("change", () => state.file && submit());
  ui.denoise.addEventListener("change", () => state.file && submit());
  ui.captionAnyway.addEventListener("click", () => {
    state.anyway = true;
    if (state.file) submit();
  });
  ui.viewToggle.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-view]");
    if (button) setView(button.dataset.view);
  });
  ui.words.addEventListener("mouseleave", () => showWord(state.pinned));
  ui.photo.addEventListener("load", () => requestAnimationFrame(resizeOverlay));
  new ResizeObserver(() => resizeOverlay()).observe(ui.stage);

  ui.searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    search(ui.searchQuery.value);
  });

  loadModelInfo();
  loadSamples();
  loadSearch();
}

// ------------------------------------------------------------------ catalogue search
async function loadSearch() {
  try {
    const health = await getJson("/v1/health");
    ui.searchPanel.hidden = !health.catalogue;
  } catch (error) {
    ui.searchPanel.hidden = true;
  }
}

async function search(text) {
  const query = text.trim();
  ui.searchHits.replaceChildren();
  if (!query) {
    ui.searchStatus.textContent = "Type some words to search for.";
    return;
  }
  ui.searchStatus.textContent = "Searching…";
  try {
    const params = new URLSearchParams({ q: query, limit: "20" });
    const found = await getJson(`/v1/search?${params}`);
    ui.searchStatus.textContent = found.hits.length
      ? `${found.hits.length} best match${found.hits.length === 1 ? "" : "es"}, best first`
      : `No caption matches “${query}”.`;
    for (const hit of found.hits) {
      const item = document.createElement("li");
      const caption = document.createElement("span");
      caption.className = "hit-caption";
      caption.textContent = hit.caption;
      const where = document.createElement("small");
      where.textContent = `${hit.path}${hit.kind ? ` · ${hit.kind}` : ""}`;
      item.append(caption, document.createElement("br"), where);
      ui.searchHits.append(item);
    }
  } catch (error) {
    ui.searchStatus.textContent = `Search failed: ${error.message}`;
  }
}

async function loadModelInfo() {
  try {
    const info = await getJson("/v1/model");
    const b = info.backbone;
    const parts = [
      `${b.name} ${b.grid[0]}×${b.grid[1]} grid`,
      `${info.vocab_size.toLocaleString()} words`,
    ];
    if (info.training && info.training.train_images) {
      parts.push(`trained on ${info.training.train_images.toLocaleString()} images`);
    }
    ui.modelInfo.textContent = parts.join(" · ");
    state.maxUploadBytes = info.limits.max_upload_bytes;
    ui.beam.max = String(Math.min(info.limits.max_beam, 10));
    ui.denoiseOption.hidden = !info.denoiser;
  } catch (error) {
    ui.modelInfo.textContent = `model information unavailable (${error.message})`;
  }
}

async function loadSamples() {
  let samples = [];
  try {
    samples = await getJson("/v1/samples");
  } catch (error) {
    return; // samples are optional
  }
  for (const sample of samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.title = sample.name;
    const img = document.createElement("img");
    img.src = `${sample.url}?size=thumb`;
    img.alt = "";
    img.loading = "lazy";
    const label = document.createElement("span");
    label.textContent = sample.name;
    button.append(img, label);
    button.addEventListener("click", () => loadSample(sample));
    ui.sampleList.append(button);
  }
  ui.samples.hidden = samples.length === 0;
}

async function loadSample(sample) {
  setStatus("loading", `Loading ${sample.name}…`);
  try {
    const response = await fetch(sample.url);
    if (!response.ok) throw new Error(await errorText(response));
    const blob = await response.blob();
    choose(new File([blob], `${sample.id}.png`, { type: "image/png" }));
  } catch (error) {
    setStatus("error", `Could not load the sample: ${error.message}`);
  }
}

// ------------------------------------------------------------------ captioning
function choose(file) {
  if (file.size > state.maxUploadBytes) {
    setStatus("error", `${file.name} is ${mb(file.size)}; the limit is ${mb(state.maxUploadBytes)}.`);
    return;
  }
  if (state.originalUrl) URL.revokeObjectURL(state.originalUrl);
  state.file = file;
  state.originalUrl = URL.createObjectURL(file);
  state.result = null;
  state.anyway = false;
  ui.kind.hidden = true;
  clearCaption();
  ui.viewToggle.hidden = true;
  showPicture(state.originalUrl);
  submit();
}

async function submit() {
  const id = ++state.request;
  const form = new FormData();
  form.append("image", state.file, state.file.name || "photo");
  form.append("beam_size", ui.beam.value);
  form.append("attention", "true");
  form.append("denoise", ui.denoiseOption.hidden ? "false" : String(ui.denoise.checked));
  form.append("caption_anyway", String(state.anyway));
  setStatus("loading", ui.denoise.checked && !ui.denoiseOption.hidden
    ? "Denoising and captioning…" : "Captioning…");
  try {
    const response = await fetch("/v1/caption", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorText(response));
    const data = await response.json();
    if (id !== state.request) return; // a newer request is on its way
    render(data);
  } catch (error) {
    if (id !== state.request) return;
    clearCaption();
    setStatus("error", error.message);
  }
}

function render(data) {
  const result = data.results[0];
  state.result = result;
  state.pinned = -1;
  showKind(result);
  if (!result.captioned) {
    ui.viewToggle.hidden = true;
    showPicture(state.originalUrl);
    clearCaption();
    setStatus("done", "");
    return;
  }
  if (result.denoised_image) {
    ui.viewToggle.hidden = false;
    setView(state.view);
  } else {
    ui.viewToggle.hidden = true;
    showPicture(state.originalUrl);
  }
  ui.words.replaceChildren();
  result.tokens.forEach((token, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "word";
    button.dataset.index = String(index);
    const p = Math.exp(result.scores[index]);
    button.title = `p = ${p.toFixed(2)}`;
    button.style.setProperty("--p", p.toFixed(3));
    button.textContent = token;
    button.addEventListener("mouseenter", () => showWord(index));
    button.addEventListener("focus", () => showWord(index));
    button.addEventListener("click", () => {
      state.pinned = state.pinned === index ? -1 : index;
      showWord(state.pinned === -1 ? index : state.pinned, true);
    });
    ui.words.append(button);
  });
  if (!result.tokens.length) ui.words.textContent = "(no words)";
  const t = data.timings;
  const bits = [
    `beam ${data.settings.beam_size}`,
    `${Math.round(t.total_ms)} ms (model ${Math.round(t.model_ms)} ms` +
      (t.denoise_ms ? `, denoise ${Math.round(t.denoise_ms)} ms)` : ")"),
    `log p ${result.log_prob.toFixed(2)}`,
  ];
  if (!result.finished) bits.push("cut at max length");
  ui.meta.textContent = bits.join(" · ");
  ui.caption.hidden = false;
  ui.legend.hidden = !result.attention;
  setStatus("done", "");
  if (window.matchMedia("(max-width: 760px)").matches) {
    ui.stage.scrollIntoView({ behavior: "smooth", block: "start" });
  }
  // Start by showing the most confident content word (or the first one).
  showWord(result.attention && result.tokens.length ? firstWord(result) : -1, true);
}

// With a document-type classifier on the server: "Photo, 99 %", or "Schematics, 96 % — not
// a photo" and a button to caption it anyway.
function showKind(result) {
  ui.kind.hidden = !result.kind;
  if (!result.kind) return;
  ui.kindText.textContent = result.kind.description;
  ui.kind.classList.toggle("not-photo", !result.kind.is_photo);
  ui.captionAnyway.hidden = result.captioned;
}

function firstWord(result) {
  const skip = new Set(["a", "an", "the", "of", "to", "and", "in", "on", "with", "is", "are"]);
  const index = result.tokens.findIndex((token) => !skip.has(token));
  return index === -1 ? 0 : index;
}

function clearCaption() {
  ui.caption.hidden = true;
  ui.legend.hidden = true;
  ui.words.replaceChildren();
  state.shown = -1;
  clearOverlay();
}

// ------------------------------------------------------------------ pictures and heat-maps
function setView(view) {
  state.view = view;
  for (const button of ui.viewToggle.querySelectorAll("button")) {
    button.classList.toggle("active", button.dataset.view === view);
  }
  const denoised = state.result && state.result.denoised_image;
  showPicture(view === "denoised" && denoised ? denoised : state.originalUrl);
}

function showPicture(url) {
  ui.placeholder.hidden = true;
  ui.photo.hidden = false;
  if (ui.photo.src !== url) ui.photo.src = url;
  else resizeOverlay();
}

function resizeOverlay() {
  if (ui.photo.hidden || !ui.photo.naturalWidth) return;
  const rect = ui.photo.getBoundingClientRect();
  const scale = Math.min(window.devicePixelRatio || 1, 2);
  const width = Math.max(1, Math.round(Math.min(rect.width * scale, 900)));
  const height = Math.max(1, Math.round(width * (rect.height / Math.max(rect.width, 1))));
  ui.overlay.style.left = `${ui.photo.offsetLeft}px`;
  ui.overlay.style.top = `${ui.photo.offsetTop}px`;
  ui.overlay.style.width = `${rect.width}px`;
  ui.overlay.style.height = `${rect.height}px`;
  if (ui.overlay.width !== width || ui.overlay.height !== height) {
    ui.overlay.width = width;
    ui.overlay.height = height;
  }
  drawHeat(state.shown);
}

function showWord(index, force = false) {
  if (!state.result || !state.result.attention) return;
  if (index === state.shown && !force) return;
  state.shown = index;
  for (const button of ui.words.querySelectorAll(".word")) {
    const i = Number(button.dataset.index);
    button.classList.toggle("active", i === index);
    button.classList.toggle("pinned", i === state.pinned);
  }
  drawHeat(index);
}

function overlayContext() {
  return ui.overlay.getContext("2d", { willReadFrequently: true });
}

function clearOverlay() {
  const ctx = overlayContext();
  ctx.clearRect(0, 0, ui.overlay.width, ui.overlay.height);
  ui.overlay.dataset.word = "";
}

// Upsample the word's small grid smoothly (the browser's bilinear scaling of a tiny canvas),
// normalise it to [0, 1], colour it with the jet map; low attention stays transparent.
function drawHeat(index) {
  const result = state.result;
  if (!result || !result.attention || index < 0 || index >= result.attention.length) {
    clearOverlay();
    return;
  }
  const grid = result.attention[index];
  const rows = grid.length;
  const cols = grid[0].length;
  const small = document.createElement("canvas");
  small.width = cols;
  small.height = rows;
  const sctx = small.getContext("2d");
  const cells = sctx.createImageData(cols, rows);
  const flat = grid.flat();
  const low = Math.min(...flat);
  const high = Math.max(...flat);
  const span = high - low > 1e-9 ? high - low : 1;
  flat.forEach((value, i) => {
    const v = Math.round((255 * (value - low)) / span);
    cells.data.set([v, v, v, 255], i * 4);
  });
  sctx.putImageData(cells, 0, 0);

  const { width, height } = ui.overlay;
  const ctx = overlayContext();
  ctx.clearRect(0, 0, width, height);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(small, 0, 0, width, height);
  const pixels = ctx.getImageData(0, 0, width, height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const v = data[i];
    data[i] = LUT[v * 3];
    data[i + 1] = LUT[v * 3 + 1];
    data[i + 2] = LUT[v * 3 + 2];
    data[i + 3] = ALPHA[v];
  }
  ctx.putImageData(pixels, 0, 0);
  ui.overlay.dataset.word = result.tokens[index];
}

// ------------------------------------------------------------------ helpers
function setStatus(kind, message) {
  ui.body.dataset.state = kind;
  ui.status.className = `status ${kind}`;
  ui.status.textContent = message;
}

async function getJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail);
  } catch (error) {
    return `${response.status} ${response.statusText}`;
  }
}

function mb(bytes) {
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
