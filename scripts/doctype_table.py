"""Mean ± sd over seeds of the classifier figures in RUN/report.json (test and val splits).

python scripts/doctype_table.py runs/doctype-s0 runs/doctype-s1 runs/doctype-s2
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(runs: list[str]) -> None:
    reports = [json.loads((Path(r) / "report.json").read_text()) for r in runs]
    print(
        "| split | condition | accuracy % | macro-F1 | photo-vs-rest % | photos kept % | "
        "non-photos let through % | ECE |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for split in ("test", "val"):
        for condition in reports[0][split]:
            rows = [r[split][condition] for r in reports]
            pvr = [r["photo_vs_rest"] for r in rows]
            print(
                f"| {split} | {condition.replace('_', ' σ ')} | "
                f"{cell([r['accuracy'] for r in rows])} | "
                f"{cell([r['macro_f1'] for r in rows], 1, 3)} | "
                f"{cell([p['accuracy'] for p in pvr])} | {cell([p['photos_kept'] for p in pvr])} | "
                f"{cell([p['non_photos_let_through'] for p in pvr])} | "
                f"{cell([r['ece'] for r in rows], 1, 3)} |"
            )
    print()
    classes = reports[0]["test"]["clean"]["classes"]
    print("| test F1 per class | " + " | ".join(classes) + " |")
    print("|---|" + "---:|" * len(classes))
    for condition in reports[0]["test"]:
        f1 = [
            cell([r["test"][condition]["per_class"][c]["f1"] for r in reports], 1, 2)
            for c in classes
        ]
        print(f"| {condition.replace('_', ' σ ')} | " + " | ".join(f1) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
