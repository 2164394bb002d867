#!/usr/bin/env bash
# One seed of docs/RESULTS.md's fine-tuning recipe: MobileNetV2's last 5 blocks trained with the
# decoder (backbone lr 1e-4, after 2 decoder-only epochs; 10 epochs, selected on val CIDEr), then
# scored on test with beam 3 from features its own backbone makes.
#   scripts/finetune_seed.sh SEED [VIEWS]            UCM-Captions (VIEWS=dihedral: flips/turns)
#   DATASET=vi scripts/finetune_seed.sh SEED [hflip] Vietnamese captions (no turns: everyday photos)
#   -> runs/real/DATASET-ft5-sSEED[-views]{,-b3.json}
# BATCHES=captions (the default) draws captions alone, as training on frozen grids does; =images
# batches whole images (the blocks run once per image; trained worse). BLR sets the blocks'
# learning rate. Run names: -captions for caption batches (-images runs have no suffix), -blrX.
# SCST=1 then runs `captioner scst` (8 epochs, patience 3) on features the fine-tuned backbone
# makes of train and val, and scores that model on test too: -> RUN-scst{,-b3.json}.
set -euo pipefail
S=${1:?seed}
V=${2:-}
D=${DATA:-../shared/data}
C=${CAPTIONER:-.venv/bin/captioner}
O=runs/real
N=${DATASET:-ucm}
mkdir -p $O
case $N in
  ucm) SOURCE=(ucm-captions/dataset_ucm.json --images $D/ucm-captions/images) ;;
  vi) SOURCE=(vietnamese-captions/captions.txt --images $D/vietnamese-captions/images) ;;
  *) echo "DATASET must be ucm or vi, not $N" >&2; exit 2 ;;
esac
[ -f $O/$N.json ] || $C prepare "$D/${SOURCE[0]}" "${SOURCE[@]:1}" --out $O/$N.json
$C extract --manifest $O/$N.json --out $O/$N-prefix5 --top-blocks 5 ${V:+--views $V} --no-progress
B=${BATCHES:-captions}
L=${BLR:-1e-4}
RUN=$N-ft5-s$S${V:+-views}$([ "$B" = images ] || echo "-$B")$([ "$L" = 1e-4 ] || echo "-blr$L")
$C train --config configs/ucm.yaml --manifest $O/$N.json --features $O/$N-prefix5 \
  --out $O/$RUN --set select_on=CIDEr ${V:+"views=[$V]"} "fine_tune_batches=$B" --epochs 10 \
  --seed $S --fine-tune-blocks 5 --backbone-lr "$L" --fine-tune-after 2 --no-progress
SPLITS=test
[ "${SCST:-0}" = 1 ] && SPLITS=train,val,test
$C extract --manifest $O/$N.json --out $O/$RUN-features --model $O/$RUN/model --splits $SPLITS \
  --no-progress
$C evaluate --model $O/$RUN/model --manifest $O/$N.json --features $O/$RUN-features \
  --split test --beam-size 3 --output $O/$RUN-b3.json --no-progress
[ "${SCST:-0}" = 1 ] || exit 0
$C scst --model $O/$RUN/model --manifest $O/$N.json --features $O/$RUN-features \
  --out $O/$RUN-scst --epochs 8 --patience 3 --no-progress
$C evaluate --model $O/$RUN-scst/model --manifest $O/$N.json --features $O/$RUN-features \
  --split test --beam-size 3 --output $O/$RUN-scst-b3.json --no-progress
