#!/usr/bin/env bash
# Fastlane Multi-GPU (issue 22) on a lent multi-GPU kind: the same model on 1, 2 and 4 GPUs in one run, plus the
# per-call communication time and the interconnect. Run from the pack root (the device tool's working dir).
#
#   device tool:  kind nvidia-h100-x4 (or nvidia-h200-x4), carry [".devcarry"], timeout_s 600, command:
#       bash benchmarks/device_multigpu.sh          # topology, comm probe (FLUX shape), FLUX.1-dev rows  (~6-8 min)
#       bash benchmarks/device_multigpu.sh wan22    # 2nd call: topology, comm probe (Wan shape), Wan 2.2 14B rows
#                                                   #   at 1280x720x81 (~6-9 min)
#   On a 2-GPU kind the 4-GPU rows and the 4-rank probe report "skipped: needs 4 GPUs, 2 visible".
#
# Stages (arguments, in this order; default "probe flux"): probe (FLUX-shape collectives on 2 and 4 ranks), flux,
# wan22 (runs its own Wan-shape probe first unless PROBE_WAN=0). The topology is always printed first.
#
# Settings (environment, all optional):
#   ROWS_FLUX    default eager,target0.3,multigpu2,multigpu4,multigpu4_async,multigpu2+target0.3,multigpu4+target0.3
#   STEPS_FLUX   28        REPEATS    2 (warm runs per row after the cold one)     ROW_T_FLUX  150 (row guard, s)
#   PROFILE      multigpu4 (rows run once more under torch.profiler: NCCL kernel time per step; "" = none)
#   ROWS_WAN     default eager,multigpu2,multigpu4 (add multigpu4+target0.3,target0.3_output: they run all steps)
#   STEPS_WAN 20, UNIFORM_WAN 2 (rows without a step cache timed over 2 steps, projected to 20), REPEATS_WAN 1,
#   ROW_T_WAN 200, RES_WAN "1280 720", FRAMES_WAN 81, ARGS_WAN / ARGS_FLUX (more run.py arguments), PROBE_WAN 1
#   T_PROBE 110 / T_FLUX 430 / T_WAN 480: stage limits (s), enforced with `timeout`, each also capped by what is
#   left of the 590 s call (BUDGET)
#   TINY=1       CPU smoke of this script (tiny models, gloo; PY=python for a venv): not a measurement
#
# What comes back under $OUT/multigpu: topo.txt, summary.txt, probe/ and probe_wan/ {log.txt,
# probe_multigpu_comm.json, .md}, flux/ and wan22/ {log.txt, results.json, results.md, steps.png}.
set -uo pipefail
export PYTHONUNBUFFERED=1
# NVLink multicast stays off on the lent hosts (it can take the shared GPUs out of service); the node's workers and
# the probe's ranks inherit this environment.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-$PWD/out/device}
M=$OUT/multigpu
mkdir -p "$M"
PY=${PY:-python3}
BUDGET=${BUDGET:-590}
ts() { date -u +%H:%M:%S; }
say() { echo "[$(ts)] $*"; }
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
limit() { local want=$1 l; l=$(left); [ "$l" -lt "$want" ] && want=$l; echo "$want"; }

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(probe flux)
tiny=${TINY:-0}

say "device_multigpu.sh: stages ${stages[*]}, pack root $PWD, OUT $M, budget ${BUDGET}s$([ "$tiny" = 1 ] && echo ', TINY CPU smoke')"
say "setup: .devcarry wheels -> /tmp/site"
if [ "$tiny" = 1 ]; then
  say "  TINY: no wheels, no .devcarry ComfyUI (this machine's own: COMFYUI_PATH / .fastlane-env)"
else
  # shellcheck source=benchmarks/device_setup.sh
  source "$(dirname "${BASH_SOURCE[0]}")/device_setup.sh"
  device_setup
fi
say "NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE TORCH_SYMM_MEM_DISABLE_MULTICAST=$TORCH_SYMM_MEM_DISABLE_MULTICAST NVSHMEM_DISABLE_NVLS=$NVSHMEM_DISABLE_NVLS"

say "topology (nvidia-smi -L, topo -m, nvlink -s)"
{
  echo "# $(date -u +%FT%TZ) $(hostname)"
  timeout 20 nvidia-smi -L 2>&1
  echo
  timeout 20 nvidia-smi topo -m 2>&1
  echo
  timeout 20 nvidia-smi nvlink -s -i 0 2>&1
  echo
  timeout 20 nvidia-smi --query-gpu=index,name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv 2>&1
} > "$M/topo.txt" 2>&1
cat "$M/topo.txt"
timeout 60 $PY -c "import torch,sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'gpus', torch.cuda.device_count(), 'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else '-')" 2>&1
say "setup took $(( $(date +%s) - START )) s"

rc_all=0
note_rc() {  # stage name, exit code
  case $2 in
    0) say "stage $1: done after $(( $(date +%s) - START )) s of the call" ;;
    124|137) say "stage $1: KILLED at its limit (what it wrote before is kept)"; rc_all=$2 ;;
    *) say "stage $1: exit code $2"; rc_all=$2 ;;
  esac
}

probe() {  # name, shape, limit
  local name=$1 shape=$2 t
  t=$(limit "$3")
  mkdir -p "$M/$name"
  if [ "$t" -lt 30 ]; then say "stage $name: skipped, ${t}s left"; return; fi
  local args=(--shape "$shape" --worlds 2,4 --iters 20 --warmup 5 --timeout $(( (t - 10) / 2 )) --out "$M/$name")
  [ "$tiny" = 1 ] && args=(--shape tiny --worlds 2 --backend gloo --iters 20 --warmup 2 --timeout 60 --out "$M/$name")
  say "stage $name: python3 benchmarks/probes/probe_multigpu_comm.py ${args[*]} (limit ${t}s; NCCL_DEBUG=INFO for the transport lines)"
  NCCL_DEBUG=${NCCL_DEBUG:-INFO} NCCL_DEBUG_SUBSYS=${NCCL_DEBUG_SUBSYS:-INIT} \
    timeout -k 10 "$t" $PY benchmarks/probes/probe_multigpu_comm.py "${args[@]}" 2>&1 | tee "$M/$name/log.txt" \
    | grep --line-buffered -v "NCCL INFO"
  local rc=${PIPESTATUS[0]}
  echo "--- NCCL transport (first lines with ' via '):"
  grep -m 12 " via " "$M/$name/log.txt" || echo "(none: gloo, or NCCL printed no transport lines)"
  note_rc "$name" $rc
}

bench() {  # name, family, rows, steps, repeats, row guard, limit, extra args...
  local name=$1 family=$2 rows=$3 steps=$4 reps=$5 rt=$6 t
  t=$(limit "$7")
  shift 7
  mkdir -p "$M/$name"
  if [ "$t" -lt 60 ]; then say "stage $name: skipped, ${t}s left"; return; fi
  local args=(--family "$family" --rows "$rows" --steps "$steps" --repeats "$reps" --timeout-per-row "$rt"
              --time-budget $(( t - 15 )) --out "$M/$name" "$@")
  [ "$tiny" = 1 ] && args+=(--tiny)
  say "stage $name: python3 benchmarks/run.py ${args[*]} (limit ${t}s)"
  timeout -k 15 "$t" $PY benchmarks/run.py "${args[@]}" 2>&1 | tee "$M/$name/log.txt" \
    | grep --line-buffered -v "\[comfy info\] \(Requested to load\|loaded completely\|model weight dtype\|model_type\)"
  local rc=${PIPESTATUS[0]}
  note_rc "$name" $rc
}

for stage in "${stages[@]}"; do
  case $stage in
    probe) probe probe flux "${T_PROBE:-110}" ;;
    flux)
      prof=${PROFILE-multigpu4}
      # shellcheck disable=SC2086
      bench flux flux "${ROWS_FLUX:-eager,target0.3,multigpu2,multigpu4,multigpu4_async,multigpu2+target0.3,multigpu4+target0.3}" \
        "${STEPS_FLUX:-28}" "${REPEATS:-2}" "${ROW_T_FLUX:-150}" "${T_FLUX:-430}" \
        ${prof:+--profile "$prof"} ${ARGS_FLUX:-} ;;
    wan22)
      [ "${PROBE_WAN:-1}" = 1 ] && probe probe_wan wan "${T_PROBE:-110}"
      read -r wan_w wan_h <<< "${RES_WAN:-1280 720}"
      [ "$tiny" = 1 ] && { wan_w=64; wan_h=64; }
      # shellcheck disable=SC2086
      bench wan22 wan22 "${ROWS_WAN:-eager,multigpu2,multigpu4}" "${STEPS_WAN:-20}" "${REPEATS_WAN:-1}" \
        "${ROW_T_WAN:-200}" "${T_WAN:-480}" --width "$wan_w" --height "$wan_h" \
        --frames "$([ "$tiny" = 1 ] && echo 5 || echo "${FRAMES_WAN:-81}")" --uniform-steps "${UNIFORM_WAN:-2}" \
        ${ARGS_WAN:-} ;;
    *) say "unknown stage $stage (probe|flux|wan22)"; rc_all=2 ;;
  esac
done

say "summary -> $M/summary.txt"
timeout 60 $PY - "$M" > "$M/summary.txt" 2>&1 <<'EOF'
import json, sys
from pathlib import Path

root = Path(sys.argv[1])
print(f"Fastlane Multi-GPU summary ({root})")
for probe in ("probe", "probe_wan"):
    f = root / probe / "probe_multigpu_comm.json"
    if not f.exists():
        continue
    rep = json.loads(f.read_text())
    print(f"\n{probe}: {rep['shape_name']} - {rep['shape']['what']}")
    for w in rep["worlds"]:
        if w.get("ops"):
            o = w["ops"]
            a2a = o.get("ulysses_in", {}).get("median_ms")
            back = o.get("ulysses_out", {}).get("median_ms")
            print(f"  {w['world']} ranks {w['backend']}: per attention ulysses in {a2a} + out {back} ms "
                  f"(a2a qkv {o.get('a2a_qkv_raw', {}).get('bus_GBps')} GB/s bus), kv_gather {o['kv_gather']['median_ms']} "
                  f"ms; per model call {w['per_model_call_ms']} ms")
        else:
            print(f"  {w['world']} ranks: {w.get('skipped') or 'ERROR ' + str(w.get('error'))}")
REF = {"multigpu2+target0.3": {"flux": "target0.3", "flux2": "target0.3", "wan22": "target0.3_output"},
       "multigpu4+target0.3": {"flux": "target0.3", "flux2": "target0.3", "wan22": "target0.3_output"}}
for stage in ("flux", "wan22"):
    f = root / stage / "results.json"
    if not f.exists():
        continue
    res = json.loads(f.read_text())
    env, cfg = res["environment"], res["config"]
    rows = {r["row"]: r for r in res["rows"]}
    print(f"\n{stage}: vs eager = speed-up over the 1-GPU eager row of this run; vs 1-GPU same stack = over the cache "
          f"row alone on 1 GPU; per GPU = that speed-up / GPUs (1.0 = linear)")
    print(f"{stage}: {cfg['family']} {cfg['width']}x{cfg['height']}"
          f"{' x ' + str(cfg['frames']) + ' frames' if cfg.get('frames') else ''}, {cfg['steps']} steps; "
          f"{env.get('device_name')} x {env.get('gpu_count', '?')} visible, interconnect {env.get('interconnect', '?')}")
    print(f"  {'row':22s} {'status':10s} {'s @ steps':>10s} {'ms/step':>9s} {'vs eager':>9s} {'vs 1-GPU same stack':>26s} {'per GPU':>8s}")
    for name, r in rows.items():
        gpus = 4 if name.startswith("multigpu4") else 2 if name.startswith("multigpu2") else 1
        sp = r.get("speedup_vs_eager")
        ref = rows.get(REF.get(name, {}).get(cfg["family"], ""), {})
        same = (ref["sampling_s_at_steps"] / r["sampling_s_at_steps"]
                if ref.get("sampling_s_at_steps") and r.get("sampling_s_at_steps") else None)
        s = r.get("sampling_s_at_steps")
        print(f"  {name:22s} {r['status'][:10]:10s} {s if s is None else round(s, 2)!s:>10s} "
              f"{r.get('ms_per_step') if r.get('ms_per_step') is None else round(r['ms_per_step'], 1)!s:>9s} "
              f"{'-' if sp is None else f'{sp:.2f}x':>9s} "
              f"{'-' if same is None else f'{same:.2f}x (vs ' + ref['row'] + ')':>26s} "
              f"{'-' if sp is None else f'{(same or sp) / gpus:.2f}':>8s}")
        if r["status"] != "ok" and not r["status"].startswith("ok"):
            print(f"      {r['status'][:300]}")
        prof = r.get("profile")
        if prof:
            nccl = sum(k["ms_per_step"] for k in prof.get("top_kernels", []) if "nccl" in k["name"].lower())
            print(f"      profile (rank 0): {prof['kernel_ms_per_step']} ms kernels / {prof['wall_ms_per_step_profiled']} "
                  f"ms wall per step; NCCL kernels among the top {len(prof.get('top_kernels', []))}: {nccl:.2f} ms/step "
                  f"(includes waiting for peers)")
EOF
cat "$M/summary.txt"
echo
say "device_multigpu.sh finished in $(( $(date +%s) - START )) s, rc $rc_all"
find "$M" -type f | sort
exit $rc_all
