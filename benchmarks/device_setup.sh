# Sourced by the device scripts (device_run.sh, device_soak.sh, device_multigpu.sh): install the carried wheels into
# /tmp/site once per machine and put them and the carried ComfyUI on PYTHONPATH. Needs `say` defined; $PY (default
# python3) is the interpreter that installs.
device_setup() {
  local py=${PY:-python3}
  if [ ! -f /tmp/site/.fastlane_installed ]; then
    if ls .devcarry/whl/*.whl >/dev/null 2>&1; then
      $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/whl/*.whl \
        && touch /tmp/site/.fastlane_installed || say "WARNING: wheel install failed (rows needing diffusers/torchao will say so)"
    else
      say "WARNING: no .devcarry/whl/*.whl (was carry [\".devcarry\"] given?)"
    fi
  else
    say "  wheels already installed on this (warm) machine"
  fi
  if [ -d .devcarry/ComfyUI ]; then
    export PYTHONPATH=/tmp/site:$PWD/.devcarry/ComfyUI${PYTHONPATH:+:$PYTHONPATH}
  else
    say "WARNING: no .devcarry/ComfyUI: run ../shared/device/prepare_carry.sh .comfyui/ComfyUI and carry .devcarry"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
}
