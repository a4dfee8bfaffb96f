# Sourced by the device scripts (device_run.sh, device_soak.sh, device_multigpu.sh, device_proxy.sh): install the
# carried wheels into /tmp/site once per machine and put them and the carried ComfyUI on PYTHONPATH; exports
# CARRIED_COMFYUI (its folder; COMFYUI_PATH too, unless set). Needs `say` defined; $PY (default python3) is the interpreter that installs.
#
# The carried ComfyUI is .devcarry/ComfyUI, or .devcarry/ComfyUI.tar.gz (11 MB of sources packed to ~3 MB, so the
# working tree plus the carry stay under the device tool's 64 MiB), unpacked once per machine into /tmp/carried:
#   tar -C .devcarry -czf .devcarry/ComfyUI.tar.gz ComfyUI && rm -rf .devcarry/ComfyUI
carried_comfyui() {
  if [ -d .devcarry/ComfyUI ]; then
    echo "$PWD/.devcarry/ComfyUI"
  elif [ -f .devcarry/ComfyUI.tar.gz ]; then
    if [ ! -f /tmp/carried/ComfyUI/main.py ]; then
      mkdir -p /tmp/carried && tar -C /tmp/carried -xzf .devcarry/ComfyUI.tar.gz || return 1
    fi
    echo /tmp/carried/ComfyUI
  else
    return 1
  fi
}

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
  if CARRIED_COMFYUI=$(carried_comfyui); then
    export CARRIED_COMFYUI PYTHONPATH=/tmp/site:$CARRIED_COMFYUI${PYTHONPATH:+:$PYTHONPATH}
    export COMFYUI_PATH=${COMFYUI_PATH:-$CARRIED_COMFYUI}
  else
    say "WARNING: no .devcarry/ComfyUI(.tar.gz): run ../shared/device/prepare_carry.sh .comfyui/ComfyUI and carry .devcarry"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
}
