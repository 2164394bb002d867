"""Markdown tables from `captioner evaluate --output` reports: one row per report, or the mean
and spread of several (e.g. seeds) per row.

    python scripts/results_table.py "greedy=runs/a-b1.json" "beam 3=runs/a-b3.json"
    python scripts/results_table.py "beam 3, 3 seeds=s0-b3.json,s1-b3.json,s2-b3.json"

A row with several reports shows mean ± sample standard deviation and, below the table, the
per-report values.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def load_scores(path: str) -> dict[str, float]:
    return json.loads(Path(path).read_text(encoding="utf-8"))["scores"]


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", help="LABEL=report.json[,report.json...]")
    args = parser.parse_args()
    lines = ["| setting | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    details = []
    for row in args.rows:
        label, _, paths = row.partition("=")
        reports = [load_scores(p) for p in paths.split(",")]
        cells = [cell([r[c] for r in reports]) if c in reports[0] else "–" for c in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if len(reports) > 1:
            each = "; ".join(f"BLEU-4 {r['BLEU-4']:.2f} / CIDEr {r['CIDEr']:.2f}" for r in reports)
            details.append(f"- {label}: {each}")
    print("\n".join(lines + ([""] + details if details else [])))


if __name__ == "__main__":
    main()
