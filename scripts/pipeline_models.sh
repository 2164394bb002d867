#!/bin/bash
# Models for bench/pipeline.py: a UCM captioner (clean MobileNetV2 features) and a denoiser.
set -e
export OMP_NUM_THREADS=1
D=../shared/data
C=.venv/bin/captioner
O=runs/pipeline-models
$C prepare $D/ucm-captions/dataset_ucm.json --images $D/ucm-captions/images --out $O/ucm.json
$C extract --manifest $O/ucm.json --out $O/ucm-features --workers 1 --no-progress
$C train --config configs/ucm.yaml --manifest $O/ucm.json --features $O/ucm-features \
    --out $O/ucm-run --epochs 8 --no-progress --set select_on=CIDEr
$C denoise train --images $D/vietnamese-captions/images --out $O/denoiser --threads 1 \
    --epochs 8 --max-minutes 9 --no-progress
echo done
