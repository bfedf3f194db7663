#!/usr/bin/env bash
# Starts one Granary silo locally with a generated config, waits until its
# gateway serves, shows a few curl calls against it and stops it on Ctrl-C.
#
#   deploy/run-local.sh [DATA_DIR] [GATEWAY_PORT]
#
# One silo only: a 3-silo local cluster comes once membership and forwarding
# between silos exist (issue 4).
set -euo pipefail
cd "$(dirname "$0")/.."
granary="${GRANARY_BIN:-build/tools/granary/granary}"
data="${1:-/tmp/granary-local}"
port="${2:-8080}"
if [[ ! -x "$granary" ]]; then
  echo "run-local: $granary not found; build first (ninja -C build granary)" >&2
  exit 2
fi
mkdir -p "$data"
config="$data/silo.toml"
cat >"$config" <<TOML
cluster_id = "local"
silo_id = "silo-1"
data_dir = "$data/db"
partitions = 64

[listen]
silo = "127.0.0.1:7100"
gateway = "127.0.0.1:$port"
TOML

log="$data/silo.log"
"$granary" silo --config "$config" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" || true' EXIT
for _ in $(seq 1 100); do
  if grep -q '^ready ' "$log"; then
    break
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
grep '^ready ' "$log"
gw="http://127.0.0.1:$port"
set -x
curl -s "$gw/healthz"
curl -s "$gw/v1/cluster"
curl -s -X POST "$gw/v1/grains/cp.cell/cell-1/call" \
  -d '{"type":"granary.cp.Reserve","message":{"tenant":"demo","capacity":8}}'
curl -s -X POST "$gw/v1/workflows/cp.create_namespace/demo/start" \
  -d '{"input_type":"granary.cp.CreateNamespace",
       "input":{"name":"demo","cell":"cell-1","tier":"standard"}}'
curl -s "$gw/v1/workflows/cp.create_namespace/demo"
curl -s "$gw/v1/workflows?type=cp.create_namespace&status=RUNNING"
"$granary" workflow history --gateway "127.0.0.1:$port" cp.create_namespace demo
set +x
echo "silo running (pid $pid, log $log); Ctrl-C stops it"
wait "$pid"
