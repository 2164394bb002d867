"""Scan-sized JPEGs through the pipeline, decoded reduced (the default) or in full.

    OMP_NUM_THREADS=2 .venv/bin/python bench/pipeline_decoding.py \\
        --scans runs/pipeline-bench/scans \\
        --classifier runs/doctype-s0/model --denoiser runs/pipeline-models/denoiser/model \\
        --captioner runs/pipeline-models/ucm-run/model --repeats 3

``captioner pipeline`` asks libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) that still gives
the largest side any model, thumbnail or attention map reads; "full decode" turns that off.
The two alternate in ``--repeats`` rounds; the seconds of every run are printed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from captioner.caption.captioner import Captioner
from captioner.denoise.denoiser import load_denoiser
from captioner.doctype.classifier import DocTypeClassifier
from captioner.pipeline.chain import Pipeline, _DecodeFiles
from captioner.pipeline.settings import PipelineSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scans", type=Path, required=True, help="folder of large JPEGs")
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--denoiser", type=Path, required=True)
    parser.add_argument("--captioner", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    classifier = DocTypeClassifier.from_pretrained(args.classifier)
    denoiser = load_denoiser(args.denoiser)
    captioner = Captioner.from_pretrained(args.captioner)
    files = sorted(p for p in args.scans.iterdir() if p.is_file())
    reduced_init = _DecodeFiles.__init__

    def full_init(self: _DecodeFiles, *a: object, **k: object) -> None:
        reduced_init(self, *a, **k)  # type: ignore[arg-type]
        self.largest_side = None  # type: ignore[assignment]

    runs: dict[str, list[float]] = {"reduced (default)": [], "full decode": []}
    for _ in range(args.repeats):
        for name, init in (("reduced (default)", reduced_init), ("full decode", full_init)):
            _DecodeFiles.__init__ = init  # type: ignore[method-assign]
            pipeline = Pipeline(classifier, denoiser, captioner, PipelineSettings())
            out = Path(tempfile.mkdtemp())
            started = time.perf_counter()
            rows = list(pipeline.run(files, out=out))
            seconds = time.perf_counter() - started
            shutil.rmtree(out)
            runs[name].append(round(seconds, 2))
            captioned = sum(r.captioned for r in rows)
            print(f"{name}: {seconds:.2f} s, {len(files) / seconds:.2f} images/s, "
                  f"{captioned} captioned", flush=True)  # fmt: skip
    _DecodeFiles.__init__ = reduced_init  # type: ignore[method-assign]
    for name, seconds in runs.items():
        print(f"{name}: runs {seconds}, best {len(files) / min(seconds):.2f} images/s")


if __name__ == "__main__":
    main()
