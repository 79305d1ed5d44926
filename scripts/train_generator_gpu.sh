#!/usr/bin/env bash
# Train the embedded generator recipe and two ablations side by side on one GPU.
#
#   scripts/train_generator_gpu.sh [DEST] [MINUTES]
#
# Runs configs/generator/pixel_reference_gpu_dg.yaml three ways, MINUTES (default 6) each:
#   reference_dg            photometric augmentation + extra anatomy, harmonic coarse fill
#                           (-> generator/weights/pixel_reference)
#   reference_dg_biharmonic the same with a biharmonic coarse fill
#                           (-> generator/weights/pixel_reference_biharmonic)
#   reference_dg_noaug      biharmonic coarse fill, no augmentation, no extra anatomy (ablation)
# Needs data/bench64 (python -m shared.benchmark --out data/bench64 --n-per-domain 300 --size 64
# --seed 0); the extra anatomy is cached under data/bench64/aux_healthy by the first CPU run of
# the config (it needs pydicom-data; the GPU box then needs only the cache). Writes
# runs/gpu/<name>/ and, when DEST is given, one tarball per run there. Install a result by
# copying runs/gpu/<name>/final to the generator/weights/ directory named above. The scorers are trained separately (generator/train_scorers.py).
# What the committed weights are (session 3, one H200, 15 min of device time in all): this script
# ran once with the biharmonic CG syncing the host every step, which held the two biharmonic runs
# to 2.5 steps/s (~900 steps, discarded); reference_dg made 4753 steps in 6 min. The biharmonic
# variant was then rerun alone (sync every 25 steps): `python generator/train.py --config
# configs/generator/pixel_reference_gpu_dg.yaml --stage reference optim.max_minutes=4.6
# optim.num_workers=10 model.harmonic_iters=0 model.biharmonic_iters=100`, 3264 steps, 11.8/s.
# Each checkpoint's generator_config.json records its exact command and step count.
# Before session 3 the embedded model came from configs/generator/pixel_reference_gpu.yaml
# (block_out_channels [32,64,128,128], 6107 steps; git history up to 1385485).
# RECIPE=dg2 runs configs/generator/pixel_reference_gpu_dg2.yaml (more kinds of self-supervised
# tissue: + abdominal CT and natural photographs) two ways instead, reference_dg2 and
# reference_dg2_biharmonic; session 4 ran it once, MINUTES=6.5, on one H100 (4236 and 2706 steps).
# It did not help the held-out domain and cost the training domains (numbers in the config's
# header and bench/results/generator_dg2.md); its weights were not kept.
# RECIPE=windows runs configs/generator/pixel_reference_gpu_windows.yaml (the window training of
# issue 18, from the biharmonic variant; needs data/bench128, --size 128) once, reference_windows.
# PY (default python3) and EXTRA (overrides for a quick CPU check) are read from the environment.
set -uo pipefail
DEST=${1:-}
MINUTES=${2:-6}
PY=${PY:-python3}
EXTRA=${EXTRA:-}
RECIPE=${RECIPE:-dg}
CONFIG=configs/generator/pixel_reference_gpu_$RECIPE.yaml
export PYTHONUNBUFFERED=1
mkdir -p runs/gpu
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"

BIHARMONIC="model.harmonic_iters=0 model.biharmonic_iters=100"
declare -A VARIANTS
case $RECIPE in
  dg) VARIANTS=(
        [reference_dg]=""
        [reference_dg_biharmonic]="$BIHARMONIC"
        [reference_dg_noaug]="$BIHARMONIC data.photometric_p=0 data.aux_per_source=0"
      ) ;;
  dg2) VARIANTS=([reference_dg2]="optim.num_workers=6" [reference_dg2_biharmonic]="optim.num_workers=6 $BIHARMONIC") ;;
  windows) VARIANTS=([reference_windows]="") ;;  # issue 18: multi-scale windows, split by source
  *) echo "unknown RECIPE=$RECIPE (dg, dg2 or windows)"; exit 2 ;;
esac
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
