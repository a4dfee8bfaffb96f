#!/usr/bin/env bash
# Run the Fastlane GPU benchmarks on the lent device machine, from the pack root (the device tool's working dir).
#
#   device tool:  carry [".devcarry"], timeout_s 600, command:
#       bash benchmarks/device_run.sh flux          # one family per call is the safe choice (see README)
#       bash benchmarks/device_run.sh sdxl
#       bash benchmarks/device_run.sh flux sdxl     # both in one call: fits 600 s only with the default rows
#
# Settings (environment, all optional):
#   ROWS_FLUX / ROWS_SDXL   rows to run (default: all rows of that family; see `python benchmarks/run.py --family flux --list`)
#   T_FLUX / T_SDXL         stage time limit in s, enforced with `timeout` (default 540 for a lone stage,
#                           320 / 230 when both run in one call)
#   ROW_T_FLUX / ROW_T_SDXL per-row guard inside run.py in s (default 240 / 200; compile FLUX ~90 s, SDXL ~140 s cold)
#   REPEATS                 warm runs per row after the cold one (default 3)
#   RES                     resolution (default 1024)
#   STEPS_FLUX / STEPS_SDXL (default 28 / 30)
#   EXTRA                   extra run.py arguments, e.g. "--no-pack" or "--extra-rows benchmarks/my_rows.py"
#
# What comes back under $OUT (8 files, one folder deep):  $OUT/<family>/{log.txt,results.json,results.md,steps.png}
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/out/device}
mkdir -p "$OUT"
ts() { date -u +%H:%M:%S; }
say() { echo "[$(ts)] $*"; }
START=$(date +%s)

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(flux sdxl)

say "device_run.sh: stages ${stages[*]}, pack root $PWD, OUT $OUT"
say "setup: .devcarry wheels -> /tmp/site"
if [ ! -f /tmp/site/.fastlane_installed ]; then
  if ls .devcarry/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/whl/*.whl \
      && touch /tmp/site/.fastlane_installed || say "WARNING: wheel install failed (rows needing diffusers/torchao will say so)"
  else
    say "WARNING: no .devcarry/whl/*.whl (was carry [\".devcarry\"] given?)"
  fi
else
  say "  already installed on this (warm) machine"
fi
[ -d .devcarry/ComfyUI ] || say "WARNING: no .devcarry/ComfyUI: run ../shared/device/prepare_carry.sh .comfyui/ComfyUI and carry .devcarry"
export PYTHONPATH=/tmp/site:$PWD/.devcarry/ComfyUI${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu \
  --format=csv 2>&1 || true
python3 -c "import torch,sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
say "setup took $(( $(date +%s) - START )) s"

# stage limits: one stage gets the whole 600 s call less setup; two share it (flux compiles longer)
if [ ${#stages[@]} -eq 1 ]; then t_flux=540; t_sdxl=540; else t_flux=320; t_sdxl=230; fi
rc_all=0
for fam in "${stages[@]}"; do
  case $fam in
    flux) rows=${ROWS_FLUX:-all}; t=${T_FLUX:-$t_flux}; rt=${ROW_T_FLUX:-240}; steps=${STEPS_FLUX:-28} ;;
    sdxl) rows=${ROWS_SDXL:-all}; t=${T_SDXL:-$t_sdxl}; rt=${ROW_T_SDXL:-200}; steps=${STEPS_SDXL:-30} ;;
    *) say "unknown stage $fam (flux|sdxl)"; rc_all=2; continue ;;
  esac
  mkdir -p "$OUT/$fam"
  say "stage $fam: rows $rows, steps $steps, res ${RES:-1024}, repeats ${REPEATS:-3}, stage limit ${t}s, row guard ${rt}s"
  # shellcheck disable=SC2086
  timeout -k 15 "$t" python3 benchmarks/run.py --family "$fam" --rows "$rows" --steps "$steps" --res "${RES:-1024}" \
    --repeats "${REPEATS:-3}" --timeout-per-row "$rt" --time-budget $(( t - 10 )) --out "$OUT/$fam" ${EXTRA:-} \
    2>&1 | tee "$OUT/$fam/log.txt"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) say "stage $fam: done" ;;
    124|137) say "stage $fam: KILLED at its ${t}s limit (results.json holds the rows finished before)"; rc_all=$rc ;;
    *) say "stage $fam: exit code $rc"; rc_all=$rc ;;
  esac
done
# every stage's table again at the end, so that all of them are in the tail the device tool returns
for fam in "${stages[@]}"; do
  [ -f "$OUT/$fam/results.md" ] && { echo; echo "=============== $fam ==============="; cat "$OUT/$fam/results.md"; }
done
echo
say "device_run.sh finished in $(( $(date +%s) - START )) s, rc $rc_all"
find "$OUT" -type f | sort
exit $rc_all
