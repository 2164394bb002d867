#!/usr/bin/env bash
# The document-type classifier figures of docs/RESULTS.md: 3 seeds (each seed holds out other
# sources), on ../shared/data (doctypes + photos of the caption datasets), 2 threads. The seeds
# share one feature folder: views depend on the image only, so only the first run extracts.
set -euo pipefail
S=${SHARED:-../shared/data}
for seed in ${SEEDS:-0 1 2}; do
  OMP_NUM_THREADS=${THREADS:-2} captioner classify train \
    --data "$S/doctypes" "Photo=$S/ucm-captions/images" "Photo=$S/vietnamese-captions/images" \
    "Photo=$S/flickr8k-mini/Images" --out "${OUT:-runs/doctype}-s$seed" --seed "$seed" \
    --features "${OUT:-runs/doctype}-features" --no-progress "$@"
done
