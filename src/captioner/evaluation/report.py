"""Qualitative report of a split: one HTML page listing every image with its references, the
generated caption (each word shaded by its probability), per-image BLEU-4 and CIDEr, and the
attention maps; sortable by any column, worst CIDEr first.

The folder is self-contained: ``index.html``, ``thumbs/`` (small JPEG copies of the images),
``attention/`` (one PNG per image) and ``report.json`` (the same data, machine readable).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.caption.captioner import Captioner, CaptionResult
from captioner.caption.decode_settings import DecodeSettings
from captioner.data.manifest import Manifest
from captioner.errors import CaptionerError, ImageLoadError
from captioner.evaluation.metrics import compute_metrics
from captioner.evaluation.split import caption_split
from captioner.fileio import atomic_write_bytes, atomic_write_json
from captioner.runlog import Progress

THUMB_SIZE = 160
ATTENTION_DPI = 60  # JPEG at 60 dpi: ~10x smaller than the PNGs of `caption --attention-dir`


@dataclass
class ReportRow:
    image: str
    references: list[str]
    result: CaptionResult
    bleu4: float
    cider: float
    thumb: str | None  # path relative to the report folder
    attention: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "generated": self.result.caption,
            "references": self.references,
            "tokens": self.result.tokens,
            "token_probs": [round(math.exp(x), 4) for x in self.result.token_log_probs],
            "BLEU-4": round(self.bleu4, 3),
            "CIDEr": round(self.cider, 3),
            "thumbnail": self.thumb,
            "attention": self.attention,
        }


def write_report(
    captioner: Captioner,
    manifest: Manifest,
    features_dir: Path,
    split: str,
    out: Path,
    decode: DecodeSettings,
    attention: bool = True,
    use_java: bool | None = None,
    progress: bool = True,
) -> Path:
    """Caption ``split`` from its cached features and write the report folder; return index.html."""
    if split not in manifest.split_names():
        raise CaptionerError(f"the manifest has no split {split!r}")
    captions = caption_split(captioner, manifest, features_dir, split, decode, progress=progress)
    if not captions.results:
        raise CaptionerError(f"no image of split {split!r} has extracted features")
    hyps = {key: result.caption for key, result in captions.results.items()}
    metrics = compute_metrics(captions.references, hyps, use_java=use_java)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    notes = list(metrics.skipped) + captions.notes
    records = {record.file: record for record in manifest.split(split)}
    for key in Progress(hyps, desc="report", unit="img", disable=not progress, leave=False):
        result = captions.results[key]
        thumb, attn = _image_files(
            manifest.path_of(records[key]), result, out, len(rows), attention
        )
        if thumb is None:
            notes.append(f"{key}: image not readable, shown without picture")
        scores = metrics.per_image[key]
        rows.append(
            ReportRow(
                key,
                captions.references[key],
                result,
                scores["BLEU-4"],
                scores["CIDEr"],
                thumb,
                attn,
            )
        )
    rows.sort(key=lambda row: row.cider)
    summary = {
        "split": split,
        "images": len(rows),
        "decoding": decode.describe(),
        "scores": metrics.scores,
        "tokenizer": metrics.tokenizer,
        "notes": notes,
        "images_without_features": captions.skipped,
        "model_info": captioner.info,
    }
    atomic_write_json(out / "report.json", {**summary, "rows": [r.to_dict() for r in rows]})
    page = out / "index.html"
    atomic_write_bytes(page, render_page(summary, rows).encode("utf-8"))
    return page


def _image_files(
    path: Path, result: CaptionResult, out: Path, index: int, attention: bool
) -> tuple[str | None, str | None]:
    from captioner.vision.images import load_image
    from captioner.viz import plot_attention

    try:
        image = load_image(path)
    except ImageLoadError:
        return None, None
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE))
    thumb_rel = f"thumbs/{index:05d}.jpg"
    (out / "thumbs").mkdir(exist_ok=True)
    thumb.convert("RGB").save(out / thumb_rel, quality=85)
    attn_rel = None
    if attention and result.tokens:
        attn_rel = f"attention/{index:05d}.jpg"
        (out / "attention").mkdir(exist_ok=True)
        plot_attention(
            image,
            result.tokens,
            result.attention,
            result.grid,
            out / attn_rel,
            title=result.caption,
            dpi=ATTENTION_DPI,
        )
    return thumb_rel, attn_rel


def _shaded_words(result: CaptionResult) -> str:
    """Each word on a background as red as it was unlikely (probability in the tooltip)."""
    spans = []
    for word, log_prob in zip(result.tokens, result.token_log_probs, strict=True):
        p = math.exp(log_prob)
        spans.append(
            f'<span class="w" style="background: rgba(220, 50, 50, {0.6 * (1 - p):.2f})" '
            f'title="p = {p:.3f}">{html.escape(word)}</span>'
        )
    return " ".join(spans) or "<em>(empty)</em>"


def render_page(summary: dict[str, Any], rows: list[ReportRow]) -> str:
    scores = " · ".join(f"{k} {v:.1f}" for k, v in summary["scores"].items())
    body = []
    for rank, row in enumerate(rows, 1):
        picture = f'<img src="{row.thumb}" alt="">' if row.thumb else ""
        if row.attention:
            picture = f'<a href="{row.attention}" title="attention maps">{picture or "maps"}</a>'
        refs = "".join(f"<li>{html.escape(r)}</li>" for r in row.references)
        mean_logp = (
            sum(row.result.token_log_probs) / len(row.result.token_log_probs)
            if row.result.token_log_probs
            else 0.0
        )
        body.append(
            f'<tr><td data-v="{rank}">{rank}</td>'
            f"<td>{picture}<div class=name>{html.escape(row.image)}</div></td>"
            f'<td data-v="{row.cider:.4f}">{row.cider:.1f}</td>'
            f'<td data-v="{row.bleu4:.4f}">{row.bleu4:.1f}</td>'
            f'<td data-v="{mean_logp:.4f}">{math.exp(mean_logp):.2f}</td>'
            f"<td>{_shaded_words(row.result)}</td><td><ul>{refs}</ul></td></tr>"
        )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in summary["notes"])
    return _PAGE.format(
        title=html.escape(f"captioner report: {summary['split']} split"),
        meta=html.escape(
            f"{summary['images']} images, {summary['decoding']}, tokenizer {summary['tokenizer']}"
        ),
        scores=html.escape(scores),
        notes=f"<ul class=notes>{notes}</ul>" if notes else "",
        rows="\n".join(body),
        info=html.escape(json.dumps(summary["model_info"], ensure_ascii=False)),
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4rem; vertical-align: top; text-align: left; }}
th {{ cursor: pointer; background: #f4f4f4; position: sticky; top: 0; }}
th.sorted::after {{ content: attr(data-dir); }}
img {{ max-width: 160px; }} .name {{ font-size: .75rem; color: #666; }}
.w {{ padding: 0 .1rem; border-radius: 3px; }} ul {{ margin: 0; padding-left: 1.1rem; }}
.notes {{ color: #a40; }} details {{ margin: .5rem 0 1rem; }}
</style></head><body>
<h1>{title}</h1>
<p>{meta}<br><strong>{scores}</strong></p>
{notes}
<details><summary>model</summary><pre>{info}</pre></details>
<p>Click a column to sort. Words are shaded by how unlikely the model found them (hover: p).
Rows start with the lowest CIDEr.</p>
<table id="rows"><thead><tr><th>#</th><th>image</th><th class="sorted" data-dir=" ▲">CIDEr</th>
<th>BLEU-4</th><th>mean p</th><th>generated</th><th>references</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<script>
document.querySelectorAll("#rows th").forEach((th, col) => th.addEventListener("click", () => {{
  const body = document.querySelector("#rows tbody");
  const up = !(th.classList.contains("sorted") && th.dataset.dir === " ▲");
  const key = tr => {{
    const cell = tr.children[col];
    return cell.dataset.v !== undefined ? parseFloat(cell.dataset.v) : cell.textContent;
  }};
  const rows = [...body.rows].sort((a, b) => {{
    const x = key(a), y = key(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
  }});
  document.querySelectorAll("#rows th").forEach(h => h.classList.remove("sorted"));
  th.classList.add("sorted"); th.dataset.dir = up ? " ▲" : " ▼";
  rows.forEach(r => body.appendChild(r));
}}));
</script>
</body></html>
"""
