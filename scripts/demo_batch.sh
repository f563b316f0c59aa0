#!/usr/bin/env bash
# Start the worker under the RunPod SDK's local API server, transcribe FILE through it with
# client.py, then stop the worker.   usage: scripts/demo_batch.sh FILE [client options]
set -euo pipefail
cd "$(dirname "$0")/.."
file="${1:?usage: scripts/demo_batch.sh FILE [--format srt]}"; shift
port="${RP_API_PORT:-8000}"
log="$(mktemp -t parakeet-worker.XXXX.log)"
python3 rp_handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port "$port" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
echo "worker starting (model: ${PARAKEET_MODEL:-nvidia/parakeet-tdt-0.6b-v3}), log: $log" >&2
for _ in $(seq 1 600); do
  if ! kill -0 $pid 2>/dev/null; then echo "worker exited:" >&2; tail -20 "$log" >&2; exit 1; fi
  if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then break; fi
  sleep 1
done
python3 client.py batch "http://127.0.0.1:$port" "$file" "$@"
