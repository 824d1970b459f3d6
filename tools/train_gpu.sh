#!/usr/bin/env bash
# The bundled model's GPU training run, sized for about 10 minutes on one H100/H200-class GPU.
# It continues the shipped model (12 patch layers, 3 character layers, hidden 256: 12.5M parameters,
# 24 MB in bf16, under the 30 MB the bundle allows) on the bundled dataset with 8x the CPU run's
# batch and patch sampling, bf16 autocast, and stops with a checkpoint at 10 minutes whatever the
# step (run it again to resume). Estimate, not yet measured on a GPU: ~100 ms a step of 64 pieces.
#   tools/train_gpu.sh [OUT]    then: python -m bench.notagen_quality --model OUT --musical --n 20
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu}"
exec ./run.sh train --data assets/data/corpus --init assets/models/cadenza-small --out "$OUT" \
    --steps 6000 --batch 64 --patch-sampling 1024 --lr 3e-4 --warmup 200 --balance 0.5 \
    --eval-every 500 --max-minutes 10 --device cuda --name cadenza-small
