#!/usr/bin/env bash
# Build the project's image and run it here, on a machine that cannot pull base images:
#   1. a Debian bookworm base (Python 3.11, venv, pip, this machine's CA bundle so that pip inside
#      the build verifies PyPI's TLS) made with debootstrap and `docker import`ed as $BASE;
#   2. `docker build --network host --build-arg BASE_IMAGE=$BASE -t negclip:check .`;
#   3. the CPU generator (compose's generator-cpu settings) with host networking on 127.0.0.1:
#      wait for /readyz, POST one negative, check a PNG comes back;
#   4. the trainer container's smoke run: a tiny benchmark, two steps of the control objective.
# Needs root and a running dockerd (Debian: apt-get install docker.io debootstrap; dockerd &).
# Prints the time of each step.  Usage: sudo scripts/check_docker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-negclip-base:bookworm}
IMAGE=${IMAGE:-negclip:check}
PORT=${PORT:-18731}
MIRROR=${MIRROR:-http://deb.debian.org/debian}  # the Debian mirror apt uses here
t() { local s=$SECONDS; "$@"; echo "[check_docker] $(date +%T) $1 ... done in $((SECONDS - s)) s"; }

build_base() {
  if docker image inspect "$BASE" >/dev/null 2>&1; then echo "[check_docker] reusing $BASE"; return; fi
  local root; root=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >/dev/null
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"  # this machine's CAs
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$root"
}

build_image() {
  docker build --network host --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" . >/tmp/check_docker_build.log 2>&1 \
    || { tail -30 /tmp/check_docker_build.log; exit 1; }
}

serve_one() {
  local name=negclip-check-$$ store; store=$(mktemp -d)
  docker run -d --rm --name "$name" --network host -v "$store":/data/store \
    -e NEG_API_DEVICE=cpu -e NEG_API_HOST=127.0.0.1 -e NEG_API_PORT="$PORT" \
    -e NEG_API_MAX_BATCH=8 -e NEG_API_TORCH_THREADS=2 "$IMAGE" >/dev/null
  trap 'docker rm -f '"$name"' >/dev/null 2>&1 || true' RETURN
  for _ in $(seq 180); do
    curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 1
  done
  curl -fs "http://127.0.0.1:$PORT/readyz"; echo
  docker run --rm --network host -v "$PWD/scripts:/s:ro" "$IMAGE" python /s/post_one.py "http://127.0.0.1:$PORT"
}

trainer_smoke() {
  docker run --rm "$IMAGE" bash -c '
    set -e
    python -m shared.benchmark --out /tmp/bench --n-per-domain 4 --size 64 >/dev/null
    python -m finetune.run --config configs/embedded/control.yaml data.root=/tmp/bench \
      output_dir=/tmp/run batch_size=4 optim.max_steps=2 optim.warmup_steps=1 checkpoint_every=0 \
      negatives.source=none
    test -f /tmp/run/model/open_clip_model.safetensors && echo "trainer smoke run: model exported"'
}

t build_base
t build_image
docker image ls "$IMAGE" --format '[check_docker] image {{.Repository}}:{{.Tag}} {{.Size}}'
t serve_one
t trainer_smoke
echo "[check_docker] passed"
