#!/usr/bin/env bash
# Train the embedded generator (two widths) side by side on one GPU, then the frozen scorers
# (whose fill detector also sees the narrow model's fills as "fake").
# What is committed (2026-11-26, one H200, 8 min each): generator/weights/pixel_reference =
# runs/gpu/reference_wide/final (6107 steps x 128), generator/weights/scorers = runs/gpu/scorers.
#
#   scripts/train_generator_gpu.sh [DEST] [MINUTES]
#
# Needs data/bench64 (python -m shared.benchmark --out data/bench64 --n-per-domain 300 --size 64
# --seed 0). Writes runs/gpu/{reference,reference_wide,scorers} and, when DEST is given, one
# tarball per result there. Install a result with generator/weights/README (see README.md).
# PY (default python3) and EXTRA (overrides for a quick CPU check) are read from the environment.
set -uo pipefail
DEST=${1:-}
MINUTES=${2:-8}
PY=${PY:-python3}
EXTRA=${EXTRA:-}
export PYTHONUNBUFFERED=1
mkdir -p runs/gpu
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"

$PY generator/train.py --config configs/generator/pixel_reference_gpu.yaml --stage reference \
  output_dir=runs/gpu/reference optim.max_minutes="$MINUTES" $EXTRA \
  > runs/gpu/reference.log 2>&1 &
p1=$!
$PY generator/train.py --config configs/generator/pixel_reference_gpu.yaml --stage reference \
  output_dir=runs/gpu/reference_wide "model.block_out_channels=[32,64,128,128]" \
  optim.max_minutes="$MINUTES" $EXTRA > runs/gpu/reference_wide.log 2>&1 &
p2=$!
wait $p1; echo "reference exit $?"
wait $p2; echo "reference_wide exit $?"
$PY -m generator.train_scorers --config configs/generator/scorers_gpu.yaml \
  out_dir=runs/gpu/scorers generator=runs/gpu/reference/final ${SCORER_EXTRA:-} \
  > runs/gpu/scorers.log 2>&1
echo "scorers exit $?"
for name in reference reference_wide; do
  tail -c 400 runs/gpu/$name.log | tr '\r' '\n' | tail -2
done
tail -5 runs/gpu/scorers.log
if [ -n "$DEST" ]; then
  mkdir -p "$DEST"
  tar czf "$DEST/reference.tgz" -C runs/gpu reference/final reference/train_config.json reference/logs reference.log
  tar czf "$DEST/reference_wide.tgz" -C runs/gpu reference_wide/final reference_wide/logs reference_wide.log
  tar czf "$DEST/scorers.tgz" -C runs/gpu scorers scorers.log
  ls -la "$DEST"
fi
