#!/usr/bin/env bash
# The denoiser figures of docs/RESULTS.md: the README's training command for each seed and
# thread count, then bench/denoise.py on each model (one thread, as in the table).
#   SEEDS="0 1 2" THREADS="1 2" scripts/denoise_seeds.sh        # what RESULTS.md reports
# Runs go to ${OUT:-runs/denoiser}-s<seed>-t<threads>; an existing run is resumed, not redone.
set -euo pipefail
S=${SHARED:-../shared/data}
BENCH_PY=${BENCH_PY:-.venv-bench/bin/python}
for threads in ${THREADS:-1 2}; do
  for seed in ${SEEDS:-0 1 2}; do
    run="${OUT:-runs/denoiser}-s$seed-t$threads"
    if [ -f "$run/model/config.json" ] && grep -q '"stopped"' "$run/model/config.json"; then
      echo "$run: done"
    else
      resume=()
      [ -f "$run/checkpoint/state.safetensors" ] && resume=(--resume)
      OMP_NUM_THREADS=$threads ${CAPTIONER:-captioner} denoise train --images "$S/vietnamese-captions/images" \
        --out "$run" --seed "$seed" --threads "$threads" --no-progress "${resume[@]}" "$@"
    fi
    if [ "${BENCH:-1}" = 1 ] && [ ! -f "$run/bench.json" ]; then
      OMP_NUM_THREADS=1 "$BENCH_PY" bench/denoise.py --model "$run/model" --sigmas 25 \
        --output "$run/bench.json"
    fi
  done
done
