#!/usr/bin/env bash
# Reproduce finetune/weights/embedded_convstem8 (the "embedded-convstem8-pretrained" CLIP):
# the committed patch-16 CLIP warm-started into the conv-stem tower (16 x 16 tokens at 128²) and
# continued three times with configs/embedded/pretrain_clip.yaml, exactly as sessions 24 and 28
# ran it (bench/results/clip_convstem.md, rounds 1-3; ≈ 3 h on two CPU threads):
#   round 1  800 steps on the benchmark            -> runs/pt_convstem8_warm
#   round 2  800 steps with lesions on every source -> runs/pt_convstem8_ms
#   round 3  800 more steps of round 2's data       -> runs/pt_convstem8_ms3   (installed, fp16)
#
#   scripts/train_embedded_convstem8.sh [THREADS]
set -euo pipefail
threads="${1:-2}"
py="${PYTHON:-python}"
[ -d data/bench128_n750 ] || OMP_NUM_THREADS="$threads" "$py" -m shared.benchmark \
    --out data/bench128_n750 --n-per-domain 750 --size 128 --seed 0
[ -d data/bench128_n750_ms ] || OMP_NUM_THREADS="$threads" "$py" -m shared.benchmark \
    --out data/bench128_n750_ms --n-per-domain 750 --size 128 --seed 0 --multi-source 250
"$py" -m finetune.warm_start --from embedded-pretrained --to embedded-convstem8 \
    --out runs/convstem8_warm
run() {  # FROM DATA OUT
    "$py" -m finetune.run --config configs/embedded/pretrain_clip.yaml model="local-dir:$1" \
        optim.lr=2.5e-4 optim.max_steps=800 num_threads="$threads" data.root="$2" output_dir="$3"
}
run runs/convstem8_warm data/bench128_n750 runs/pt_convstem8_warm
run runs/pt_convstem8_warm/model data/bench128_n750_ms runs/pt_convstem8_ms
run runs/pt_convstem8_ms/model data/bench128_n750_ms runs/pt_convstem8_ms3
"$py" -m finetune.pretrain_embedded --install-from runs/pt_convstem8_ms3 \
    --dest embedded-convstem8-pretrained
