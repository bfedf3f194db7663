#!/usr/bin/env bash
# Starts a local Granary cluster on 127.0.0.1: a fake cloud API process
# (the one the control-plane sample's resource grains call) and N
# control-plane silo processes (control_plane_silo, the sample's grains on
# the Granary host; set GRANARY_SILO_BIN to run your own silo binary); waits until every gateway serves, runs a demo workflow to its
# end, and stops everything it started on Ctrl-C (or at once with --once).
#
#   deploy/run-local.sh [--etcd] [--silos N] [--gateway-port P]
#                       [--silo-port P] [--api-port P] [--etcd-port P]
#                       [--fail-rate R] [--once] [DATA_DIR]
#
# Without --etcd, silo-1 is the seed that keeps the membership table
# ("embedded" provider). With --etcd, an etcd server is started in DATA_DIR
# and keeps the table (client port --etcd-port, 2379; peer port + 1).
# Gateways listen on --gateway-port, +1, ... (8081, 8082, ...); silo-to-silo
# ports are --silo-port, +1, ... (7101, 7102, ...); the fake cloud API on
# --api-port (0: any free port) fails --fail-rate of its calls (0.05), which
# the resource grains retry. DATA_DIR defaults to /tmp/granary-local.
set -euo pipefail
cd "$(dirname "$0")/.."
granary="${GRANARY_BIN:-build/tools/granary/granary}"
silo_bin="${GRANARY_SILO_BIN:-build/samples/control_plane/control_plane_silo}"
fake_cloud="${FAKE_CLOUD_BIN:-build/samples/control_plane/fake_cloud/fake_cloud_api}"
use_etcd=0
silos=3
gateway_port=8081
silo_port=7101
api_port=0
etcd_port=2379
fail_rate=0.05
once=0
data=/tmp/granary-local
need_value() {
  [[ $# -ge 2 && -n "$2" ]] || { echo "run-local: $1 needs a value" >&2; exit 2; }
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --etcd) use_etcd=1 ;;
    --silos) need_value "$@"; silos="$2"; shift ;;
    --gateway-port) need_value "$@"; gateway_port="$2"; shift ;;
    --silo-port) need_value "$@"; silo_port="$2"; shift ;;
    --api-port) need_value "$@"; api_port="$2"; shift ;;
    --etcd-port) need_value "$@"; etcd_port="$2"; shift ;;
    --fail-rate) need_value "$@"; fail_rate="$2"; shift ;;
    --once) once=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "run-local: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) data="$1" ;;
  esac
  shift
done
for n in "$silos" "$gateway_port" "$silo_port" "$api_port" "$etcd_port"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "run-local: '$n' is not a number" >&2; exit 2; }
done
for bin in "$granary" "$silo_bin" "$fake_cloud"; do
  if [[ ! -x "$bin" ]]; then
    echo "run-local: $bin not found; build first" \
      "(ninja -C build granary control_plane_silo fake_cloud_api)" >&2
    exit 2
  fi
done
mkdir -p "$data"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Waits (20 s at most) for a line starting with $2 in log $1 and prints it.
wait_for_line() {
  for _ in $(seq 1 200); do
    grep -m1 "^$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "run-local: no '$2' in $1:" >&2
  cat "$1" >&2
  exit 1
}

"$fake_cloud" --port "$api_port" --fail-rate "$fail_rate" \
  >"$data/fake-cloud.log" 2>&1 &
pids+=($!)
api_line=$(wait_for_line "$data/fake-cloud.log" 'listening on ')
api="${api_line#listening on }"

membership="provider = \"embedded\"
seeds = [\"silo-1@127.0.0.1:$silo_port\"]"
if [[ $use_etcd == 1 ]]; then
  etcd --data-dir "$data/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    >"$data/etcd.log" 2>&1 &
  pids+=($!)
  membership="provider = \"etcd\"
endpoints = [\"127.0.0.1:$etcd_port\"]"
fi

for i in $(seq 1 "$silos"); do
  cat >"$data/silo-$i.toml" <<TOML
cluster_id = "local"
silo_id = "silo-$i"
data_dir = "$data/silo-$i"
partitions = 64

[listen]
silo = "127.0.0.1:$((silo_port + i - 1))"
gateway = "127.0.0.1:$((gateway_port + i - 1))"

[membership]
$membership
TOML
  "$silo_bin" --config "$data/silo-$i.toml" --cloud-api "$api" \
    >"$data/silo-$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 1 "$silos"); do
  wait_for_line "$data/silo-$i.log" 'ready '
done
gw1="127.0.0.1:$gateway_port"
gw_last="127.0.0.1:$((gateway_port + silos - 1))"
sleep 2 # Let the first silo hand partitions to the others.
set -x
"$granary" cluster status --gateway "$gw1"
curl -s -X POST "http://$gw_last/v1/grains/cp.cell/cell-1/call" \
  -d '{"type":"granary.cp.Reserve","message":{"tenant":"demo","capacity":8}}'
"$granary" workflow start --gateway "$gw_last" cp.create_namespace demo \
  --input-type granary.cp.CreateNamespace \
  --input '{"name":"demo","cell":"cell-1","tier":"standard"}'
"$granary" workflow result --gateway "$gw1" cp.create_namespace demo \
  --wait 60000
set +x
echo "fake cloud API on $api; logs in $data/*.log"
if [[ $once == 1 ]]; then
  exit 0
fi
echo "cluster running; Ctrl-C stops it gracefully"
wait
