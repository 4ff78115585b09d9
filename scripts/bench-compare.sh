#!/usr/bin/env bash
# Compares W3 on several builds of Weft, interleaved in one session (this
# machine's speed drifts over minutes, so the builds' runs alternate). Each run
# starts a fresh `weft dev` of the build in its own process (127.0.0.1, a
# temporary data dir), runs that build's `weft-bench --server` against it, and
# stops the node by its PID.
#
#   scripts/bench-compare.sh [--rounds N] DIR... [-- weft-bench args...]
#
# Each DIR holds a `weft` and a `weft-bench` binary. Default bench arguments:
# `--latency --count 2000`. Prints one JSON line per run:
# {"build":DIR,"node_cpu_ticks":N,"result":{...weft-bench --json...}}.
set -euo pipefail
rounds=3
dirs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --) shift; break ;;
    *) dirs+=("$1"); shift ;;
  esac
done
[ ${#dirs[@]} -ge 1 ] || { echo "usage: bench-compare.sh [--rounds N] DIR... [-- bench args]" >&2; exit 2; }
bench_args=("$@")
[ ${#bench_args[@]} -eq 0 ] && bench_args=(--latency --count 2000)
port=${WEFT_BENCH_PORT:-17433}

run_one() {
  local dir=$1 data pid out
  data=$(mktemp -d)
  "$dir/weft" dev --data-dir "$data/node" --listen "127.0.0.1:$port" --metrics-listen none \
    >"$data/node.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    "$dir/weft" --server "127.0.0.1:$port" cluster status >/dev/null 2>&1 && break
    sleep 0.1
  done
  local cpu0 cpu1
  cpu0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$("$dir/weft-bench" --server "http://127.0.0.1:$port" --json "${bench_args[@]}" 2>/dev/null || echo null)
  cpu1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  # The node's user + system CPU over the benchmark, in clock ticks (usually 1/100 s).
  echo "{\"build\":\"$dir\",\"node_cpu_ticks\":$((cpu1 - cpu0)),\"result\":$out}"
}

# Odd rounds run the builds in the order given, even rounds in reverse (ABBA), so a drift
# of the machine's speed during a round does not favour one build.
for round in $(seq 1 "$rounds"); do
  order=("${dirs[@]}")
  if (( round % 2 == 0 )); then
    order=()
    for (( i=${#dirs[@]}-1; i>=0; i-- )); do order+=("${dirs[$i]}"); done
  fi
  for dir in "${order[@]}"; do
    run_one "$dir"
  done
done
