#!/usr/bin/env bash
# One UCM-Captions seed of docs/RESULTS.md's "Three seeds" recipe: cross-entropy selected on
# val CIDEr (8 epochs), SCST (8 epochs, patience 3), each scored on test with beam 3.
#   scripts/ucm_seed.sh SEED      (runs/real/ucm-mnv2-sSEED{,-scst}, reports *-b3.json)
set -euo pipefail
S=${1:?seed}
D=${DATA:-../shared/data}
C=${CAPTIONER:-.venv/bin/captioner}
O=runs/real
mkdir -p $O
[ -f $O/ucm.json ] || $C prepare $D/ucm-captions/dataset_ucm.json --images $D/ucm-captions/images --out $O/ucm.json
$C extract --manifest $O/ucm.json --out $O/ucm-features --no-progress
$C train --config configs/ucm.yaml --manifest $O/ucm.json --features $O/ucm-features \
  --out $O/ucm-mnv2-s$S --set select_on=CIDEr --epochs 8 --seed $S --no-progress
$C scst --model $O/ucm-mnv2-s$S/model --manifest $O/ucm.json --features $O/ucm-features \
  --out $O/ucm-mnv2-s$S-scst --epochs 8 --patience 3 --seed $S --no-progress
for run in ucm-mnv2-s$S ucm-mnv2-s$S-scst; do
  $C evaluate --model $O/$run/model --manifest $O/ucm.json --features $O/ucm-features \
    --split test --beam-size 3 --output $O/$run-b3.json --no-progress
done
