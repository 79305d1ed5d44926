#!/usr/bin/env bash
# Train the SD inpainting generator's reference LoRA, DPO-tune it, then serve base + LoRA: the
# three commands of README "On a GPU host: fine-tuning the SD inpainting generator", in order.
# docker-compose.yml's `generator-train` profile runs it (`docker compose --profile
# generator-train up generator-train`); on a host without Docker: `scripts/train_then_serve.sh`.
#
# Needs models/sd_inpaint/ (a StableDiffusionInpaintPipeline save_pretrained dir). Builds the 512²
# benchmark data/bench512 when it is missing. Every stage resumes, so a restarted container
# continues instead of starting over:
#   1. reference LoRA  configs/gpu/sd_inpaint_lora_reference.yaml -> runs/gpu/sd_reference/final
#                      (skipped when final/ exists; else --resume latest from its checkpoints)
#   2. DPO pairs       configs/gpu/sd_inpaint_pairs.yaml -> runs/gpu/sd_pairs, sharded over
#                      NUM_GPUS processes (one per GPU; finished positives are skipped)
#   3. DPO             configs/gpu/sd_inpaint_lora_dpo.yaml -> runs/gpu/sd_dpo
#                      (skipped when summary.json exists; else --resume latest when it can)
#   4. serve           NEG_API_GENERATOR (base, from the environment; default models/sd_inpaint)
#                      + NEG_API_GENERATOR_LORA = the DPO's best checkpoint when it beat the
#                      reference on validation (summary.json's best_checkpoint), else the
#                      reference LoRA; `exec python -m api`.
# The two training stages run as one process (their configs are one-GPU recipes); NUM_GPUS
# (default: every visible GPU) shards only pair generation. PY (default python) is the interpreter.
# DRY_RUN=1 prints each command (`+ ...`) instead of running it (tests/api/test_deploy_files.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
DRY_RUN=${DRY_RUN:-}
export PYTHONUNBUFFERED=1
REFERENCE_CONFIG=configs/gpu/sd_inpaint_lora_reference.yaml
PAIRS_CONFIG=configs/gpu/sd_inpaint_pairs.yaml
DPO_CONFIG=configs/gpu/sd_inpaint_lora_dpo.yaml
REFERENCE_OUT=runs/gpu/sd_reference   # = output_dir of $REFERENCE_CONFIG
DPO_OUT=runs/gpu/sd_dpo               # = output_dir of $DPO_CONFIG
NUM_GPUS=${NUM_GPUS:-$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")}
log() { echo "[train_then_serve] $(date -u +%T) $*"; }
run() { if [ -n "$DRY_RUN" ]; then echo "+ $*"; else "$@"; fi; }

# `--resume latest` when the stage left accelerate checkpoints behind (a killed run).
resume_flag() { compgen -G "$1/checkpoints/checkpoint_*" >/dev/null && echo "--resume latest" || true; }

launch() {  # accelerate launch with N processes (gloo/NCCL DDP only when N > 1)
  local n=$1; shift
  local multi=(); [ "$n" -gt 1 ] && multi=(--multi_gpu)
  run "$PY" -m accelerate.commands.launch "${multi[@]}" --num_processes "$n" --num_machines 1 \
    --mixed_precision bf16 --dynamo_backend no "$@"
}

if [ ! -f data/bench512/manifest.jsonl ]; then
  log "building the 512² benchmark data/bench512"
  run "$PY" -m shared.benchmark --out data/bench512 --n-per-domain 300 --size 512 --seed 0
fi

if [ -d "$REFERENCE_OUT/final" ]; then
  log "reference LoRA: $REFERENCE_OUT/final exists, skipped"
else
  log "1/3 reference LoRA ($REFERENCE_CONFIG)"
  # shellcheck disable=SC2046
  launch 1 generator/train.py --config "$REFERENCE_CONFIG" --stage reference $(resume_flag "$REFERENCE_OUT")
fi

log "2/3 DPO pairs on $NUM_GPUS process(es) ($PAIRS_CONFIG)"
launch "$NUM_GPUS" generator/pairs.py --config "$PAIRS_CONFIG"

if [ -f "$DPO_OUT/summary.json" ]; then
  log "DPO: $DPO_OUT/summary.json exists, skipped"
else
  log "3/3 DPO ($DPO_CONFIG)"
  # shellcheck disable=SC2046
  launch 1 generator/train.py --config "$DPO_CONFIG" --stage dpo $(resume_flag "$DPO_OUT")
fi

# The DPO's best checkpoint when it beat the reference on validation, else the reference LoRA.
if [ -f "$DPO_OUT/summary.json" ]; then
  LORA=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['best_checkpoint'] or sys.argv[2])" \
    "$DPO_OUT/summary.json" "$REFERENCE_OUT/final")
else  # only in a dry run: the DPO stage above writes summary.json
  LORA="<$DPO_OUT/summary.json best_checkpoint, else $REFERENCE_OUT/final>"
fi
BASE=${NEG_API_GENERATOR:-models/sd_inpaint}
log "serving $BASE + LoRA $LORA"
run exec env NEG_API_GENERATOR="$BASE" NEG_API_GENERATOR_LORA="$LORA" "$PY" -m api
