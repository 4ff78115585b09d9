#!/usr/bin/env bash
# Compares W3 on two builds of Weft, interleaved in one session (this machine's
# speed drifts over minutes, so runs of A and B alternate). Each round starts a
# fresh `weft dev` of the build in its own process (on 127.0.0.1, a temporary
# data dir), runs `weft-bench --server` of the same build against it, and stops
# the node by its PID.
#
#   scripts/bench-compare.sh DIR_A DIR_B [ROUNDS] [-- weft-bench args...]
#
# DIR_A and DIR_B hold a `weft` and a `weft-bench` binary each. Default bench
# arguments: `--latency --count 2000`. Prints one JSON line per run, tagged.
set -euo pipefail
a=${1:?usage: bench-compare.sh DIR_A DIR_B [ROUNDS] [-- bench args]}
b=${2:?usage: bench-compare.sh DIR_A DIR_B [ROUNDS] [-- bench args]}
rounds=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
bench_args=("$@")
[ ${#bench_args[@]} -eq 0 ] && bench_args=(--latency --count 2000)
port=${WEFT_BENCH_PORT:-17433}
metrics=$((port + 1))

run_one() {
  local tag=$1 dir=$2 data pid
  data=$(mktemp -d)
  "$dir/weft" dev --data-dir "$data" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" \
    >"$data/node.log" 2>&1 &
  pid=$!
  # Ready when the node answers a cluster status.
  for _ in $(seq 1 600); do
    "$dir/weft" --server "http://127.0.0.1:$port" cluster status >/dev/null 2>&1 && break
    sleep 0.1
  done
  local out
  out=$("$dir/weft-bench" --server "http://127.0.0.1:$port" --json "${bench_args[@]}" || true)
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  echo "{\"build\":\"$tag\",\"result\":${out:-null}}"
}

for round in $(seq 1 "$rounds"); do
  run_one A "$a"
  run_one B "$b"
done
