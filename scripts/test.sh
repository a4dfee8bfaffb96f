#!/usr/bin/env bash
# The test suite: sets up (idempotent) and runs pytest against the real ComfyUI. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >/dev/null
PYTHON=$(sed -n 's/^PYTHON=//p' .fastlane-env)
export COMFYUI_PATH=${COMFYUI_PATH:-$(sed -n 's/^COMFYUI_PATH=//p' .fastlane-env)}
exec "$PYTHON" -m pytest -q "$@"
