#!/usr/bin/env bash
# One-command demo: set up (idempotent), start ComfyUI headless with the Fastlane pack on 127.0.0.1, queue
# workflows/api/fastlane-demo-compare.api.json through ComfyUI's HTTP API, wait for it, print the Fastlane benchmark
# report, copy the two sampled images and the latency plot into out/, stop the server.
#
# Runs on a CPU in well under a minute once set up (the demo model is tiny). The server gets a private, temporary
# base directory (models, input, output, user data, database) whose custom_nodes/ holds only a link to this pack, so
# an existing ComfyUI install and its other custom nodes are neither loaded nor written to.
#
#   scripts/demo.sh                    # FASTLANE_DEMO_PORT=8199 scripts/demo.sh to pick the port
#   scripts/demo.sh path/to/other.api.json
set -euo pipefail
pack_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$pack_dir"
workflow=${1:-workflows/api/fastlane-demo-compare.api.json}
out_dir=$pack_dir/out

log() { printf '[demo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v curl >/dev/null || { echo "demo.sh needs curl" >&2; exit 1; }
[ -f "$workflow" ] || { echo "no workflow $workflow" >&2; exit 1; }

log "setup (scripts/setup.sh; a no-op when already set up)"
scripts/setup.sh >/dev/null
COMFYUI_PATH=$(sed -n 's/^COMFYUI_PATH=//p' .fastlane-env)
PY=$(sed -n 's/^PYTHON=//p' .fastlane-env)

port=${FASTLANE_DEMO_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
url=http://127.0.0.1:$port
base=$(mktemp -d "${TMPDIR:-/tmp}/fastlane-demo.XXXXXX")
mkdir -p "$base/custom_nodes" "$base/user"
ln -s "$pack_dir" "$base/custom_nodes/comfyui-fastlane"
server_log=$base/comfyui.log
server_pid=

stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true  # (a background job of a script ignores SIGINT)
    for _ in $(seq 30); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$base"
}
trap stop_server EXIT
fail() { echo "demo failed: $*" >&2; echo "--- ComfyUI log (last 60 lines) ---" >&2; tail -n 60 "$server_log" >&2 || true; exit 1; }

log "starting ComfyUI ($COMFYUI_PATH) on $url"
(cd "$COMFYUI_PATH" && DO_NOT_TRACK=1 exec "$PY" main.py --cpu --listen 127.0.0.1 --port "$port" \
  --disable-auto-launch --disable-api-nodes --base-directory "$base" \
  --database-url "sqlite:///$base/user/comfyui.db") >"$server_log" 2>&1 &
server_pid=$!
for i in $(seq 360); do
  curl -sf "$url/object_info/FastlaneBenchmark" 2>/dev/null | grep -q FastlaneBenchmark && break
  kill -0 "$server_pid" 2>/dev/null || fail "ComfyUI exited while starting"
  [ "$i" -lt 360 ] || fail "ComfyUI did not come up with the Fastlane nodes in 180 s"
  sleep 0.5
done
log "server up; queueing $workflow"

body=$("$PY" -c 'import json, sys; print(json.dumps({"prompt": json.load(open(sys.argv[1])), "client_id": "fastlane-demo"}))' "$workflow")
response=$(curl -s -w '\n%{http_code}' -H 'Content-Type: application/json' -d "$body" "$url/prompt")
code=${response##*$'\n'}
response=${response%$'\n'*}
[ "$code" = 200 ] || fail "POST /prompt answered HTTP $code: $response"
prompt_id=$("$PY" -c 'import json, sys; print(json.loads(sys.argv[1])["prompt_id"])' "$response")
log "prompt $prompt_id queued; waiting for it"

history=$base/history.json
for i in $(seq 1200); do
  curl -sf "$url/history/$prompt_id" -o "$history" && grep -q '"status"' "$history" && break
  kill -0 "$server_pid" 2>/dev/null || fail "ComfyUI exited while running the workflow"
  [ "$i" -lt 1200 ] || fail "the workflow did not finish in 10 minutes"
  sleep 0.5
done

mkdir -p "$out_dir"
"$PY" - "$history" "$prompt_id" "$workflow" "$base/output" "$out_dir" <<'EOF' || fail "the workflow failed"
import json, os, shutil, sys
from pathlib import Path

history, prompt_id, workflow, output_dir, out_dir = sys.argv[1:]
entry = json.load(open(history))[prompt_id]
prompt = json.load(open(workflow))
status = entry["status"]
if status["status_str"] != "success":
    for event, data in status["messages"]:
        if event == "execution_error":
            print(f"{data['node_type']} (node {data['node_id']}): {data['exception_type']}: {data['exception_message']}",
                  file=sys.stderr)
    sys.exit(1)
outputs = entry["outputs"]
reports = [i for i, n in prompt.items() if n["class_type"] == "FastlaneBenchmarkReport"]
for node_id in reports:
    text = outputs[node_id]["text"][0]
    print(text)
    (Path(out_dir) / "report.txt").write_text(text + "\n")
copied = []
for node_id, node in prompt.items():
    if node["class_type"] != "SaveImage":
        continue
    name = node["inputs"]["filename_prefix"].rsplit("/", 1)[-1]
    for k, image in enumerate(outputs.get(node_id, {}).get("images", [])):
        target = Path(out_dir) / (f"{name}.png" if k == 0 else f"{name}_{k}.png")
        shutil.copyfile(Path(output_dir) / image["subfolder"] / image["filename"], target)
        copied.append(os.path.relpath(target))
if reports:
    copied.append(os.path.relpath(Path(out_dir) / "report.txt"))
print("\nsaved:\n  " + "\n  ".join(copied))
EOF
log "done"
