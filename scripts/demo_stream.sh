#!/usr/bin/env bash
# Start the real-time WebSocket server, stream FILE to it in real time with client.py (partials
# and finals printed as they arrive), then stop the server.   usage: scripts/demo_stream.sh FILE
set -euo pipefail
cd "$(dirname "$0")/.."
file="${1:?usage: scripts/demo_stream.sh FILE [--fast]}"; shift
port="${WS_PORT:-8765}"
log="$(mktemp -t parakeet-ws.XXXX.log)"
python3 websocket_handler.py --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
echo "server starting (model: ${PARAKEET_MODEL:-nvidia/parakeet-tdt-0.6b-v3}), log: $log" >&2
# /ping answers 204 while the model loads and 200 once it is warm
for _ in $(seq 1 600); do
  if ! kill -0 $pid 2>/dev/null; then echo "server exited:" >&2; tail -20 "$log" >&2; exit 1; fi
  code="$(python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/ping', timeout=2).status)" 2>/dev/null || true)"
  [ "$code" = "200" ] && break
  sleep 1
done
python3 client.py stream "ws://127.0.0.1:$port" "$file" "$@"
