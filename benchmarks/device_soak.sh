#!/usr/bin/env bash
# The soak on the lent GPU (issue 21), one device call: the OOM checks, then a real ComfyUI server on the GPU driven
# with as many prompts of the shipped FLUX.1-dev / SDXL workflows (real architectures, random weights) as fit.
#
#   device tool:  carry [".devcarry"], timeout_s 600, command:
#       bash benchmarks/device_soak.sh
#
# Stages (each under `timeout`, times since the start of the call in the log):
#   setup   .devcarry wheels -> /tmp/site, PYTHONPATH with .devcarry/ComfyUI (as device_run.sh); checks that the
#           server's own dependencies (aiohttp, yarl, ...) import
#   write   in the background from the start, while the OOM stage runs: the random-weight model files under $MODELS
#           (soak_real.py write-models: FLUX ~50 s, SDXL ~11 s; kept on a warm machine). GPU memory: the writer's
#           peak (FLUX, 22 GB) + the OOM check's (~36 GB) fit an 80 GB card; the OOM limits are torch's own
#           per-process ones, so the writer does not change what they provoke
#   oom     benchmarks/oom_check.py --size $OOM_SIZE (FLUX built in memory; Quantize / Compile / CUDA Graph OOMs;
#           ~60-90 s; at 512^2 its compile also fills inductor's on-disk cache the soak's first FLUX compile reads)
#   soak    benchmarks/soak.py --real: a private ComfyUI on the GPU, prompts until the call's end less a reserve
#
# Settings (environment, all optional):
#   TOTAL (590)  seconds the whole script may take      PROMPTS (220) prompts planned (the time budget stops earlier)
#   MIN_PROMPTS (100) fewer sent is a failure           T_OOM (150) the OOM stage's limit
#   SKIP_OOM=1   soak only                              FAMILIES (flux,sdxl; weighted: flux:1,sdxl:3 sends a
#                quarter of the prompts to FLUX, whose prompts take 6-25 s against SDXL's 2-4 s)    MAX_SIZE (1024)
#   STEPS_RANGE (8,14)   COMPILE_SHAPES (512x1: each more shape costs FLUX ~10-25 s and SDXL ~25-40 s of compiling
#   per quantization; "512x1,512x2" shows a batch change compiling once)   MODELS (/tmp/fastlane-soak-models)
#   SEED (0)   OOM_SIZE (512)
#   SOAK_ARGS    more soak.py arguments (e.g. "--repeat-tolerance 2 --allow-recompiles")
#
# What comes back: $OUT/oom/{log.txt,oom_check.json}, $OUT/soak/{write.txt,log.txt,prompts.jsonl,summary.json,
# comfyui.log}
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/out/device}
START=$(date +%s)
TOTAL=${TOTAL:-590}
ts() { echo "$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s"; }
say() { echo "[$(ts)] $*"; }
mkdir -p "$OUT/oom" "$OUT/soak"

say "device_soak.sh: pack root $PWD, OUT $OUT, total ${TOTAL}s"
# shellcheck source=benchmarks/device_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/device_setup.sh"
device_setup
export COMFYUI_PATH=${CARRIED_COMFYUI:-$PWD/.devcarry/ComfyUI} FASTLANE_PYTHON=python3
# the server's own web stack (the benchmarks never needed it): from .devcarry/soak_whl only where the image lacks it
if ! python3 -c "import aiohttp, yarl" 2>/dev/null; then
  if ls .devcarry/soak_whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-soak .devcarry/soak_whl/*.whl \
      || say "WARNING: installing .devcarry/soak_whl failed"
    export PYTHONPATH=$PYTHONPATH:/tmp/site-soak
    say "  aiohttp & co. from .devcarry/soak_whl (/tmp/site-soak, after the image's own packages)"
  else
    say "WARNING: no aiohttp on this image and no .devcarry/soak_whl: the soak's server cannot start"
  fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv 2>&1 || true
df -h /tmp 2>&1 | tail -n 1
python3 - <<'EOF'
import importlib.util, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())
need = ["aiohttp", "yarl", "requests", "psutil", "PIL", "safetensors", "transformers", "sentencepiece"]
optional = ["sqlalchemy", "alembic", "av", "torchvision", "comfyui_frontend_package", "torchaudio", "kornia", "spandrel"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
print("server needs, missing:", missing or "none", "| optional, absent:",
      [m for m in optional if importlib.util.find_spec(m) is None] or "none")
if missing:
    print("WARNING: the soak's ComfyUI server cannot start without", missing,
          "- add their wheels: ../shared/device/prepare_carry.sh .comfyui/ComfyUI", " ".join(missing))
EOF
say "setup done"

MODELS=${MODELS:-/tmp/fastlane-soak-models}
FAMILIES=${FAMILIES:-flux,sdxl}
say "stage write (background): model files for $FAMILIES under $MODELS"
( timeout -k 10 300 python3 benchmarks/soak_real.py write-models "$MODELS" --families "$FAMILIES" \
    > "$OUT/soak/write.txt" 2>&1; echo "exit code $?" >> "$OUT/soak/write.txt" ) &
writer=$!

rc_oom=0
if [ "${SKIP_OOM:-0}" != 1 ]; then
  say "stage oom: benchmarks/oom_check.py --size ${OOM_SIZE:-512} (limit ${T_OOM:-150}s)"
  timeout -k 10 "${T_OOM:-150}" python3 benchmarks/oom_check.py --size "${OOM_SIZE:-512}" --out "$OUT/oom" 2>&1 \
    | tee "$OUT/oom/log.txt"
  rc_oom=${PIPESTATUS[0]}
  say "stage oom: exit code $rc_oom"
fi
wait "$writer"
say "stage write: $(tail -n 1 "$OUT/soak/write.txt"); $(grep -c written_s "$OUT/soak/write.txt") famil(y/ies) written now"
grep -E "written_s|kept|Error|error" "$OUT/soak/write.txt" | head -n 8

# the soak sends prompts until END_BY, then unloads (VRAM floor), writes its summary and stops the server
now=$(date +%s)
left=$(( START + TOTAL - now ))
END_BY=$(( START + TOTAL - 60 ))
say "stage soak: ${left}s left; prompts until $(date -u -d @$END_BY +%H:%M:%S) (then summary and shutdown)"
timeout -k 10 $(( left - 5 )) python3 benchmarks/soak.py --real --prompts "${PROMPTS:-220}" \
  --min-prompts "${MIN_PROMPTS:-100}" --end-by "$END_BY" --finish-by $(( START + TOTAL - 22 )) --seed "${SEED:-0}" --families "$FAMILIES" \
  --max-size "${MAX_SIZE:-1024}" --steps-range "${STEPS_RANGE:-8,14}" --compile-shapes "${COMPILE_SHAPES:-512x1}" \
  --models-dir "$MODELS" --out "$OUT/soak" ${SOAK_ARGS:-} 2>&1 | tee "$OUT/soak/log.txt"
rc_soak=${PIPESTATUS[0]}
case $rc_soak in
  0) say "stage soak: goals met" ;;
  124|137) say "stage soak: KILLED at its limit (prompts.jsonl holds the prompts finished before)" ;;
  *) say "stage soak: exit code $rc_soak (goals failed or an error: see above)" ;;
esac

echo
echo "=============== OOM checks ==============="
python3 - "$OUT/oom/oom_check.json" <<'EOF' || true
import json, sys
try:
    s = json.load(open(sys.argv[1]))
except Exception as e:
    print("no oom_check.json:", e); sys.exit()
if s.get("skipped"):
    print("skipped:", s["skipped"])
for c in s.get("cases", []):
    print(f"{c['case']}: {c['outcome']} | limit {c.get('limit_gib')} GiB | after lifting: {c.get('after_lifting')} | received MODEL: {c.get('received_model_after')}")
print("broken:", s.get("broken"), "| seconds", s.get("seconds"), "| device", s.get("device"))
EOF
echo "=============== soak summary ==============="
python3 - "$OUT/soak/summary.json" <<'EOF' || true
import json, sys
sys.path.insert(0, "benchmarks")
try:
    s = json.load(open(sys.argv[1]))
except Exception as e:
    print("no summary.json:", e); sys.exit()
import soak
print(soak.format_summary(s))
EOF
say "device_soak.sh finished: oom rc $rc_oom, soak rc $rc_soak"
find "$OUT" -type f | sort
[ "$rc_oom" = 0 ] && [ "$rc_soak" = 0 ]
exit $?
