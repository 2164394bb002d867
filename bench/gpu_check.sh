#!/usr/bin/env bash
# The prepared check of the CUDA paths (issue 17): under 8 minutes on one GPU, prints tables.
#   bash bench/gpu_check.sh                 # on a CUDA machine, from the repository root
#   DEVICE=cpu SECONDS_PER_ROW=0.5 bash bench/gpu_check.sh    # a dry run of the script itself
# 1. bench/gpu_check.py: AMP training steps (decoder, whole backbone), extraction per backbone,
#    batched beam search.  2. A 1-GPU torchrun training run (fp16 with GradScaler, then bf16) on
#    a small synthetic feature set, resumed once, so the DDP + AMP + resume path runs for real.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
$PY bench/gpu_check.py --device "$DEVICE" --seconds "${SECONDS_PER_ROW:-4}" --json "$OUT/steps.json"

$PY - "$OUT/data" <<'PY'
import sys
from pathlib import Path
import numpy as np
from captioner.data.manifest import ImageRecord, Manifest
from captioner.features.cache import FeatureCache
root, rng = Path(sys.argv[1]), np.random.default_rng(0)
words = ["red", "green", "blue", "circle", "square", "triangle", "small", "large"]
header = {"backbone": "synthetic", "weights_id": "gpu-check", "preprocessing": {"image_size": 8},
          "grid": [7, 7], "channels": 64}
records = []
for split, count in (("train", 512), ("val", 64)):
    feats = rng.normal(size=(count, 49, 64)).astype(np.float16)
    names = [f"{split}{i:04d}.png" for i in range(count)]
    for i, name in enumerate(names):
        a, b = np.argsort(feats[i].mean(0))[-2:] % len(words)
        records.append(ImageRecord(name, split, [f"a {words[a]} {words[b]}", f"the {words[a]}"]))
    cache = FeatureCache.create(root / "features" / split, header, names)
    cache.write(np.arange(count), feats)
    cache.flush()
Manifest(root / "images", records, {"format": "gpu-check"}, {}).save(root / "manifest.json")
PY

if [ "$DEVICE" = cpu ]; then PRECISIONS="fp32"; else PRECISIONS="fp16 bf16"; fi
echo
echo "| torchrun, 1 process | epochs | wall s | last val_loss |"
echo "|---|---:|---:|---:|"
for precision in $PRECISIONS; do
  run="$OUT/run-$precision"
  rm -rf "$run"
  args=(--manifest "$OUT/data/manifest.json" --features "$OUT/data/features" --out "$run"
        --batch-size 64 --device "$DEVICE" --precision "$precision" --no-progress)
  start=$(date +%s%N)
  $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m captioner.cli train \
    "${args[@]}" --epochs 2 > "$run.log" 2>&1
  $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m captioner.cli train \
    "${args[@]}" --epochs 3 --resume >> "$run.log" 2>&1
  end=$(date +%s%N)
  last=$($PY -c "import json,sys; h=json.load(open(sys.argv[1])); print(len(h), round(h[-1]['val_loss'], 4))" "$run/history.json")
  echo "| $precision, trained 2 epochs then resumed to 3 | ${last% *} | $(( (end - start) / 1000000000 )) | ${last#* } |"
done
