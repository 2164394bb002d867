"""The worst mistakes of a classifier evaluation as a static HTML page of thumbnails."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.fileio import atomic_write_bytes
from captioner.vision.images import load_image

THUMB_SIDE = 160


@dataclass
class Mistake:
    path: str
    true: str
    predicted: str
    confidence: float
    condition: str  # "clean" or "noise 25"
    probabilities: dict[str, float]


def write_mistakes_page(
    mistakes: list[Mistake], out_dir: Path, summary: dict[str, Any], limit: int = 60
) -> Path:
    """``out_dir/mistakes.html`` with the ``limit`` most confident mistakes first."""
    out_dir = Path(out_dir)
    thumbs = out_dir / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    shown = sorted(mistakes, key=lambda m: -m.confidence)[:limit]
    cards = []
    for n, mistake in enumerate(shown):
        name = f"{n:04d}.jpg"
        try:
            image = load_image(mistake.path)
            image.thumbnail((THUMB_SIDE, THUMB_SIDE))
            image.save(thumbs / name, quality=85)
            img = f'<img src="thumbs/{name}" alt="{html.escape(Path(mistake.path).name)}">'
        except Exception:  # a thumbnail that cannot be made must not lose the page
            img = "<div class=missing>no thumbnail</div>"
        probs = ", ".join(
            f"{k} {v * 100:.0f} %"
            for k, v in sorted(mistake.probabilities.items(), key=lambda kv: -kv[1])[:3]
        )
        cards.append(
            f"<figure>{img}<figcaption><b>{html.escape(mistake.predicted)}</b> "
            f"{mistake.confidence * 100:.0f} % (true: {html.escape(mistake.true)}, "
            f"{html.escape(mistake.condition)})<br><small>{html.escape(Path(mistake.path).name)}"
            f"<br>{html.escape(probs)}</small></figcaption></figure>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Classifier mistakes</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; }}
main {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ width: {THUMB_SIDE + 20}px; margin: 0; padding: 6px; border: 1px solid #ddd; }}
figcaption {{ font-size: 13px; }} .missing {{ height: {THUMB_SIDE}px; background: #eee; }}
pre {{ background: #f6f6f6; padding: .5rem; overflow-x: auto; }}
</style></head><body>
<h1>Document-type classifier: {len(mistakes)} mistakes, most confident first</h1>
<pre>{html.escape(json.dumps(summary, indent=1)[:4000])}</pre>
<main>
{"".join(cards) or "<p>No mistakes.</p>"}
</main></body></html>
"""
    path = out_dir / "mistakes.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
