#!/usr/bin/env bash
# Train the embedded generator recipe and two ablations side by side on one GPU.
#
#   scripts/train_generator_gpu.sh [DEST] [MINUTES]
#
# Runs configs/generator/pixel_reference_gpu_dg.yaml three ways, MINUTES (default 6) each:
#   reference_dg           biharmonic coarse fill + photometric augmentation + extra anatomy
#   reference_dg_noaug     biharmonic coarse fill only (no augmentation, no extra anatomy)
#   reference_dg_harmonic  harmonic coarse fill (the previous embedded model's) + augmentation
# Needs data/bench64 (python -m shared.benchmark --out data/bench64 --n-per-domain 300 --size 64
# --seed 0); the extra anatomy is cached under data/bench64/aux_healthy by the first CPU run of
# the config (it needs pydicom-data; the GPU box then needs only the cache). Writes
# runs/gpu/<name>/ and, when DEST is given, one tarball per run there. Install a result with
# generator/weights/README. The scorers are trained separately (generator/train_scorers.py).
# History: the committed weights before 2026-11-26 (session 3) came from the previous version
# of this script: configs/generator/pixel_reference_gpu.yaml at block_out_channels [32,64,128,128].
# PY (default python3) and EXTRA (overrides for a quick CPU check) are read from the environment.
set -uo pipefail
DEST=${1:-}
MINUTES=${2:-6}
PY=${PY:-python3}
EXTRA=${EXTRA:-}
CONFIG=configs/generator/pixel_reference_gpu_dg.yaml
export PYTHONUNBUFFERED=1
mkdir -p runs/gpu
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"

declare -A VARIANTS=(
  [reference_dg]=""
  [reference_dg_noaug]="data.photometric_p=0 data.aux_per_source=0"
  [reference_dg_harmonic]="model.biharmonic_iters=0 model.harmonic_iters=50"
)
pids=()
for name in "${!VARIANTS[@]}"; do
  # shellcheck disable=SC2086
  $PY generator/train.py --config $CONFIG --stage reference output_dir=runs/gpu/$name \
    optim.max_minutes="$MINUTES" ${VARIANTS[$name]} $EXTRA > runs/gpu/$name.log 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; echo "exit $?"; done
for name in "${!VARIANTS[@]}"; do
  echo "$name: $(tail -c 300 runs/gpu/$name.log | tr '\r' '\n' | grep -E 'it/s|s/it' | tail -1)"
done
if [ -n "$DEST" ]; then
  mkdir -p "$DEST"
  for name in "${!VARIANTS[@]}"; do
    tar czf "$DEST/$name.tgz" -C runs/gpu "$name/final" "$name/train_config.json" "$name/logs" "$name.log"
  done
  ls -la "$DEST"
fi
