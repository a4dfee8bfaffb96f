#!/usr/bin/env bash
# The proxy model's GPU work on the lent device machine, from the pack root (device tool: carry [".devcarry"]):
#   bash benchmarks/device_proxy.sh train   # scripts/train_demo.py --family flux-proxy --device cuda (TRAIN_S seconds)
#   bash benchmarks/device_proxy.sh duel    # benchmarks/fidelity.py --family flux-proxy --grid duel --device cuda
# Outputs under $OUT: the weights file and preview (train), the duel's json/md/png (duel), a log per stage.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/out/device}
mkdir -p "$OUT"
say() { echo "[$(date -u +%H:%M:%S)] $*"; }
# shellcheck source=benchmarks/device_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/device_setup.sh"
device_setup
[ -n "${CARRIED_COMFYUI:-}" ] || exit 1
export COMFYUI_PATH=$CARRIED_COMFYUI
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for stage in "$@"; do
  say "stage $stage"
  case $stage in
    train) timeout $(( ${TRAIN_S:-420} + 120 )) python3 scripts/train_demo.py --family flux-proxy --device cuda \
             --max-seconds "${TRAIN_S:-420}" --out "$OUT/fastlane-proxy-flux.safetensors" \
             --preview "$OUT/proxy-preview.png" ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/train.log" ;;
    duel) timeout "${DUEL_T:-400}" python3 benchmarks/fidelity.py --family flux-proxy --grid duel --device cuda \
             --seeds "${SEEDS:-2}" --classes "${CLASSES:-8}" --out "$OUT" ${DUEL_ARGS:-} 2>&1 \
             | grep -v "^WARNING\|torchaudio" | tee "$OUT/duel.log" ;;
    *) say "unknown stage $stage" ;;
  esac
done
say done
