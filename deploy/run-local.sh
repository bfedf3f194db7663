#!/usr/bin/env bash
# Starts a local Granary cluster of 3 silo processes on 127.0.0.1, waits
# until every gateway serves, shows a few calls against it and stops the
# silos gracefully on Ctrl-C.
#
#   deploy/run-local.sh [--etcd] [--silos N] [DATA_DIR]
#
# Without --etcd, silo-1 is the seed that keeps the membership table
# ("embedded" provider). With --etcd, an etcd server is started in DATA_DIR
# and keeps the table. Gateways listen on 8081, 8082, ...; silo-to-silo
# ports are 7101, 7102, ...
set -euo pipefail
cd "$(dirname "$0")/.."
granary="${GRANARY_BIN:-build/tools/granary/granary}"
use_etcd=0
silos=3
data=/tmp/granary-local
while [[ $# -gt 0 ]]; do
  case "$1" in
    --etcd) use_etcd=1 ;;
    --silos) silos="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) data="$1" ;;
  esac
  shift
done
if [[ ! -x "$granary" ]]; then
  echo "run-local: $granary not found; build first (ninja -C build granary)" >&2
  exit 2
fi
mkdir -p "$data"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

membership='provider = "embedded"
seeds = ["silo-1@127.0.0.1:7101"]'
if [[ $use_etcd == 1 ]]; then
  etcd --data-dir "$data/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 >"$data/etcd.log" 2>&1 &
  pids+=($!)
  membership='provider = "etcd"
endpoints = ["127.0.0.1:2379"]'
fi

for i in $(seq 1 "$silos"); do
  cat >"$data/silo-$i.toml" <<TOML
cluster_id = "local"
silo_id = "silo-$i"
data_dir = "$data/silo-$i"
partitions = 64

[listen]
silo = "127.0.0.1:710$i"
gateway = "127.0.0.1:808$i"

[membership]
$membership
TOML
  "$granary" silo --config "$data/silo-$i.toml" >"$data/silo-$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 1 "$silos"); do
  for _ in $(seq 1 200); do
    grep -q '^ready ' "$data/silo-$i.log" && break
    sleep 0.1
  done
  grep '^ready ' "$data/silo-$i.log" || { cat "$data/silo-$i.log" >&2; exit 1; }
done
sleep 2 # Let the first silo hand partitions to the others.
set -x
"$granary" cluster status --gateway 127.0.0.1:8081
curl -s -X POST "http://127.0.0.1:8082/v1/grains/cp.cell/cell-1/call" \
  -d '{"type":"granary.cp.Reserve","message":{"tenant":"demo","capacity":8}}'
"$granary" workflow start --gateway 127.0.0.1:8083 cp.create_namespace demo \
  --input-type granary.cp.CreateNamespace \
  --input '{"name":"demo","cell":"cell-1","tier":"standard"}' || true
set +x
echo "cluster running (logs in $data/*.log); Ctrl-C stops it gracefully"
wait
