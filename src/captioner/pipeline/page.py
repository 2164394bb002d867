"""The review page: ``DIR/index.html``, one static file that works from the file system.

Thumbnails are grouped by kind, least confident first (the classifier's probability of the
kind, or the caption's score when lower), with every class's probability, the caption, and
links to the original file, its attention map and its denoised copy (whose thumbnail sits
beside the original's). A search box ranks captions by BM25 in the browser over the JSON index
embedded in the page (no server, no network: it works from ``file://``). Unreadable files and
entries that were not walked are listed last with their reasons.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from captioner.fileio import atomic_write_bytes
from captioner.pipeline.catalogue import Catalogue

PAGE = "index.html"


def _href(target: str, folder: Path) -> str:
    """A relative URL from the page to ``target`` (a path, absolute or relative to it)."""
    path = Path(target)
    relative = os.path.relpath(path, folder) if path.is_absolute() else target
    return quote(Path(relative).as_posix())


def page_index(catalogue: Catalogue, folder: Path) -> dict[str, Any]:
    """The data the page embeds: one compact entry per row, plus what was not walked."""
    items = []
    for row in catalogue.rows():
        entry: dict[str, Any] = {"p": row["path"], "h": _href(row["path"], folder)}
        if row["error"] is not None:
            entry["e"] = row["error"]
            items.append(entry)
            continue
        if row["kind"] is not None:
            entry["k"] = row["kind"]
            entry["pr"] = round(row["probability"], 4)
            entry["ps"] = {k: round(v, 4) for k, v in (row["probabilities"] or {}).items()}
        if row["captioned"]:
            entry["c"] = row["caption"]
            entry["cs"] = round(row["caption_score"] or 0.0, 4)
        for key, column in (
            ("t", "thumbnail"),
            ("dt", "denoised_thumbnail"),
            ("d", "denoised_path"),
            ("a", "attention_path"),
        ):
            if row[column]:
                entry[key] = quote(row[column])
        if row["denoised"]:
            entry["n"] = 1
        if row["same_as"]:
            entry["s"] = row["same_as"]
        items.append(entry)
    return {
        "items": items,
        "not_walked": [{"p": p, "e": why} for p, why in catalogue.not_walked()],
        "signature": catalogue.signature,
    }


def write_review_page(catalogue: Catalogue, folder: str | Path) -> Path:
    """Write ``folder/index.html`` (atomically) from the catalogue; return its path."""
    folder = Path(folder)
    data = json.dumps(page_index(catalogue, folder), ensure_ascii=False, separators=(",", ":"))
    data = data.replace("</", "<\\/")  # never closes the <script> it sits in
    title = f"Catalogue: {folder.resolve().name}"
    text = _TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)
    target = folder / PAGE
    atomic_write_bytes(target, text.encode("utf-8"))
    return target


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5rem 3rem; color: #1d232a; }
header { position: sticky; top: 0; background: #fff; padding: .8rem 0; z-index: 1;
  border-bottom: 1px solid #dde2e7; }
h1 { font-size: 1.3rem; margin: 0 0 .4rem; }
#summary { color: #56616c; margin: .2rem 0 .5rem; }
#search { font-size: 1rem; padding: .4rem .6rem; width: min(36rem, 100%); }
#search-info { margin-left: .8rem; color: #56616c; }
nav a { margin-right: .8rem; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr));
  gap: .8rem; }
.card { border: 1px solid #dde2e7; border-radius: 6px; padding: .6rem; display: flex;
  flex-direction: column; gap: .35rem; }
.pics { display: flex; gap: .4rem; align-items: flex-start; }
.pics figure { margin: 0; text-align: center; font-size: 11px; color: #56616c; }
.pics img { max-width: 160px; max-height: 160px; display: block; background: #eef1f4; }
.kind { font-weight: 600; }
.low { color: #b3261e; }
.caption { font-size: 15px; }
.bars { display: grid; grid-template-columns: auto 1fr auto; gap: 0 .4rem;
  font-size: 11px; color: #56616c; align-items: center; }
.bar { height: 6px; background: #eef1f4; border-radius: 3px; overflow: hidden; }
.bar > span { display: block; height: 100%; background: #3b7dd8; }
.path { font-size: 11px; color: #56616c; word-break: break-all; }
.links a { margin-right: .6rem; font-size: 12px; }
.error { color: #b3261e; }
button.more { margin-top: .6rem; }
table { border-collapse: collapse; }
td { border-top: 1px solid #dde2e7; padding: .25rem .6rem .25rem 0; vertical-align: top; }
</style>
</head>
<body>
<header>
<h1>__TITLE__</h1>
<div id="summary"></div>
<input id="search" type="search" placeholder="Search the captions, e.g. dog on a beach"
  autocomplete="off" aria-label="Search the captions"><span id="search-info"></span>
<nav id="nav"></nav>
</header>
<main>
<section id="results" hidden><h2 id="results-title"></h2><div class="grid" id="result-grid">
</div></section>
<div id="groups"></div>
</main>
<script type="application/json" id="catalogue-data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("catalogue-data").textContent);
const ITEMS = DATA.items;
const SHOWN = 200;  // cards drawn per group before "show all"
const LOW = 0.6;    // confidence under this is shown in red

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}
function confidence(item) {
  const p = item.pr === undefined ? 1 : item.pr;
  return item.cs === undefined ? p : Math.min(p, item.cs);
}
function pct(x) { return (100 * x).toFixed(0) + " %"; }

function card(item, score) {
  const node = el("div", {class: "card", "data-path": item.p});
  const pics = el("div", {class: "pics"});
  const original = el("a", {href: item.h, title: item.p});
  original.append(item.t ? el("img", {src: item.t, alt: item.p, loading: "lazy"})
                         : el("span", {text: "(no thumbnail)"}));
  pics.append(el("figure", {}, original, el("figcaption", {text: "original"})));
  if (item.dt) {
    const link = el("a", {href: item.d || item.dt, class: "denoised-link"});
    link.append(el("img", {src: item.dt, alt: "denoised", loading: "lazy"}));
    pics.append(el("figure", {}, link,
      el("figcaption", {text: item.d ? "denoised (full copy)" : "denoised (preview)"})));
  }
  node.append(pics);
  if (item.k !== undefined) {
    const head = el("div", {});
    head.append(el("span", {class: "kind" + (item.pr < LOW ? " low" : ""),
                            text: item.k + " " + pct(item.pr)}));
    if (score !== undefined) head.append(el("span", {text: "  · match " + score.toFixed(2)}));
    node.append(head);
    const bars = el("div", {class: "bars"});
    for (const [name, p] of Object.entries(item.ps || {}).sort((a, b) => b[1] - a[1])) {
      const bar = el("div", {class: "bar"});
      bar.append(el("span", {style: "width:" + (100 * p).toFixed(1) + "%"}));
      bars.append(el("span", {text: name}), bar, el("span", {text: pct(p)}));
    }
    node.append(bars);
  }
  if (item.c !== undefined) {
    node.append(el("div", {class: "caption", text: item.c}));
    node.append(el("div", {class: item.cs < LOW ? "low" : "", text: "caption score " +
      item.cs.toFixed(2)}));
  }
  const links = el("div", {class: "links"});
  links.append(el("a", {href: item.h, text: "original"}));
  if (item.a) links.append(el("a", {href: item.a, class: "attention-link", text: "attention"}));
  if (item.d) links.append(el("a", {href: item.d, text: "denoised copy"}));
  node.append(links);
  if (item.s) node.append(el("div", {class: "path", text: "same content as " + item.s}));
  node.append(el("div", {class: "path", text: item.p}));
  return node;
}

function group(title, id, items, draw) {
  const section = el("section", {id: id, class: "group"});
  section.append(el("h2", {text: title + " (" + items.length + ")"}));
  const grid = el("div", {class: "grid"});
  section.append(grid);
  const fill = (count) => { grid.replaceChildren(...items.slice(0, count).map(draw)); };
  fill(SHOWN);
  if (items.length > SHOWN) {
    const more = el("button", {class: "more", text: "Show all " + items.length});
    more.onclick = () => { fill(items.length); more.remove(); };
    section.append(more);
  }
  return section;
}

function errorTable(rows) {
  const table = el("table", {});
  for (const row of rows) {
    const tr = el("tr", {});
    tr.append(el("td", {class: "path", text: row.p}), el("td", {class: "error", text: row.e}));
    table.append(tr);
  }
  return table;
}

function render() {
  const kinds = new Map();
  const failed = [];
  for (const item of ITEMS) {
    if (item.e !== undefined) { failed.push(item); continue; }
    const kind = item.k === undefined ? "Uncategorised" : item.k;
    if (!kinds.has(kind)) kinds.set(kind, []);
    kinds.get(kind).push(item);
  }
  const order = [...kinds.keys()].sort((a, b) =>
    kinds.get(b).length - kinds.get(a).length || a.localeCompare(b));
  const groups = document.getElementById("groups");
  const nav = document.getElementById("nav");
  for (const [n, kind] of order.entries()) {
    const items = kinds.get(kind).sort((a, b) => confidence(a) - confidence(b) ||
                                                 a.p.localeCompare(b.p));
    groups.append(group(kind, "kind-" + n, items, (item) => card(item)));
    nav.append(el("a", {href: "#kind-" + n, text: kind + " " + items.length}));
  }
  if (failed.length) {
    const section = el("section", {id: "failed"}, el("h2", {text: "Unreadable (" +
      failed.length + ")"}), errorTable(failed));
    groups.append(section);
    nav.append(el("a", {href: "#failed", text: "unreadable " + failed.length}));
  }
  if (DATA.not_walked.length) {
    groups.append(el("section", {id: "not-walked"}, el("h2", {text: "Not walked (" +
      DATA.not_walked.length + ")"}), errorTable(DATA.not_walked)));
    nav.append(el("a", {href: "#not-walked", text: "not walked " + DATA.not_walked.length}));
  }
  const captioned = ITEMS.filter((item) => item.c !== undefined).length;
  document.getElementById("summary").textContent = ITEMS.length + " files, " + captioned +
    " captioned, " + failed.length + " unreadable; least confident first in each kind";
}

// ---- search: BM25 over the captions (the ranking SQLite's FTS5 uses in `captioner search`)
function tokens(text) {
  return text.normalize("NFD").replace(/\\p{M}+/gu, "").toLowerCase()
    .match(/[\\p{L}\\p{N}]+/gu) || [];
}
const INDEX = (() => {
  const docs = [], df = new Map();
  let total = 0;
  for (const item of ITEMS) {
    if (item.c === undefined) continue;
    const words = tokens(item.c), tf = new Map();
    for (const w of words) tf.set(w, (tf.get(w) || 0) + 1);
    for (const w of tf.keys()) df.set(w, (df.get(w) || 0) + 1);
    docs.push({item: item, tf: tf, length: words.length});
    total += words.length;
  }
  return {docs: docs, df: df, average: docs.length ? total / docs.length : 1};
})();
function search(query) {
  const terms = [...new Set(tokens(query))];
  const n = INDEX.docs.length, k1 = 1.2, b = 0.75, hits = [];
  for (const doc of INDEX.docs) {
    let score = 0;
    for (const term of terms) {
      const f = doc.tf.get(term);
      if (!f) continue;
      const df = INDEX.df.get(term);
      const idf = Math.log(1 + (n - df + 0.5) / (df + 0.5));
      score += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * doc.length / INDEX.average));
    }
    if (score > 0) hits.push({item: doc.item, score: score});
  }
  return hits.sort((x, y) => y.score - x.score || x.item.p.localeCompare(y.item.p));
}
function onSearch() {
  const query = document.getElementById("search").value.trim();
  const results = document.getElementById("results");
  const info = document.getElementById("search-info");
  document.getElementById("groups").hidden = query !== "";
  results.hidden = query === "";
  if (query === "") { info.textContent = ""; return; }
  const hits = search(query);
  info.textContent = hits.length + " caption" + (hits.length === 1 ? "" : "s") + " match";
  document.getElementById("results-title").textContent = "Search: " + query;
  document.getElementById("result-grid").replaceChildren(
    ...hits.slice(0, SHOWN).map((hit) => card(hit.item, hit.score)));
}
render();
document.getElementById("search").addEventListener("input", onSearch);
document.body.dataset.ready = "true";
</script>
</body>
</html>
"""
