#!/usr/bin/env bash
# Run the Fastlane GPU benchmarks on the lent device machine, from the pack root (the device tool's working dir).
#
#   device tool:  carry [".devcarry"], timeout_s 600, command:
#       bash benchmarks/device_run.sh flux          # one family per call is the safe choice (see README)
#       bash benchmarks/device_run.sh sdxl
#       bash benchmarks/device_run.sh flux sdxl     # both in one call: fits 600 s only with the default rows
#       bash benchmarks/device_run.sh qwen-image    # issue 19's families at real size, one per call (~6-8 min each):
#       bash benchmarks/device_run.sh z-image       #   8 steps (Z-Image-Turbo's setting) ...
#       bash benchmarks/device_run.sh z-image-28    #   ... and 28 steps (the same rows)
#       bash benchmarks/device_run.sh wan22         #   one A14B expert, 832x480, 81 frames, 20 steps
#       bash benchmarks/device_run.sh flux2         #   FLUX.2-dev: bf16 on an H200, fp8 weights on an 80 GB H100
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
# The new families (stage name: its settings' suffix): qwen-image: QWEN, z-image / z-image-28: ZIMAGE (steps 8 / 28),
# wan22: WAN, flux2: FLUX2. Per family: ROWS_<S>, T_<S> (stage limit, default 540 alone, 540/n when n stages share
# a call), ROW_T_<S> (row guard), STEPS_<S>, REPEATS_<S>, ARGS_<S> (more run.py arguments, e.g. "--res 1024" or
# "--frames 49"); REPEATS applies where REPEATS_<S> is unset. Their resolution/frames are run.py's per-family
# defaults (RES does not apply). wan22 times rows without a step cache over 4 steps (--uniform-steps 4, projected
# to 20 from ms/step; cache rows run all 20): its eager step is ~7 s on an H100.
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
# shellcheck source=benchmarks/device_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/device_setup.sh"
device_setup
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu \
  --format=csv 2>&1 || true
python3 -c "import torch,sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
say "setup took $(( $(date +%s) - START )) s"

# stage limits: one stage gets the whole 600 s call less setup; two share it (flux compiles longer)
if [ ${#stages[@]} -eq 1 ]; then t_flux=540; t_sdxl=540; else t_flux=320; t_sdxl=230; fi
t_new=$(( 540 / ${#stages[@]} ))
# the new families' default rows: eager, ComfyUI's native fast path (fp8_e4m3fn_fast, + TorchCompileModel), and
# Fastlane's fast tier and fp8 tier. Compiling rows run in this order after the cheap ones: the fast tier first, so
# that a stage cut short by its limit loses the optional rows (the time budget reports them as skipped)
new_rows="eager,native_fp8,fast_target0.3_fewfp8,native_fp8+compile,fp8sm_fewfp8+compile_regional"
rc_all=0
for fam in "${stages[@]}"; do
  args=(--res "${RES:-1024}")
  reps=${REPEATS:-3}
  case $fam in
    flux) family=flux; rows=${ROWS_FLUX:-all}; t=${T_FLUX:-$t_flux}; rt=${ROW_T_FLUX:-240}; steps=${STEPS_FLUX:-28} ;;
    sdxl) family=sdxl; rows=${ROWS_SDXL:-all}; t=${T_SDXL:-$t_sdxl}; rt=${ROW_T_SDXL:-200}; steps=${STEPS_SDXL:-30} ;;
    qwen-image) family=qwen-image; rows=${ROWS_QWEN:-$new_rows,compile_regional}; t=${T_QWEN:-$t_new}
      rt=${ROW_T_QWEN:-240}; steps=${STEPS_QWEN:-20}; reps=${REPEATS_QWEN:-${REPEATS:-2}}; args=(${ARGS_QWEN:-}) ;;
    z-image|z-image-28) family=z-image; rows=${ROWS_ZIMAGE:-${new_rows/fast_target0.3/fast_target0.5_fewfp8,fast_target0.3},compile_regional}
      t=${T_ZIMAGE:-$t_new}; rt=${ROW_T_ZIMAGE:-200}; reps=${REPEATS_ZIMAGE:-${REPEATS:-3}}; args=(${ARGS_ZIMAGE:-})
      if [ "$fam" = z-image ]; then steps=${STEPS_ZIMAGE:-8}; else steps=28; fi ;;
    wan22) family=wan22; rows=${ROWS_WAN:-$new_rows}; t=${T_WAN:-$t_new}; rt=${ROW_T_WAN:-260}
      steps=${STEPS_WAN:-20}; reps=${REPEATS_WAN:-1}; args=(--uniform-steps 4 ${ARGS_WAN:-}) ;;
    flux2) family=flux2; rows=${ROWS_FLUX2:-$new_rows}; t=${T_FLUX2:-$t_new}; rt=${ROW_T_FLUX2:-240}
      steps=${STEPS_FLUX2:-28}; reps=${REPEATS_FLUX2:-${REPEATS:-2}}; args=(${ARGS_FLUX2:-}) ;;
    *) say "unknown stage $fam (flux|sdxl|qwen-image|z-image|z-image-28|wan22|flux2)"; rc_all=2; continue ;;
  esac
  mkdir -p "$OUT/$fam"
  say "stage $fam: rows $rows, steps $steps, args ${args[*]}, repeats $reps, stage limit ${t}s, row guard ${rt}s"
  # shellcheck disable=SC2086
  timeout -k 15 "$t" python3 benchmarks/run.py --family "$family" --rows "$rows" --steps "$steps" "${args[@]}" \
    --repeats "$reps" --timeout-per-row "$rt" --time-budget $(( t - 10 )) --out "$OUT/$fam" ${EXTRA:-} \
    2>&1 | tee "$OUT/$fam/log.txt"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) say "stage $fam: done after $(( $(date +%s) - START )) s of the call" ;;
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
