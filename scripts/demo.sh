#!/usr/bin/env bash
# From a fresh clone to a three-node cluster surviving the loss of a node: builds Weft, starts
# three `weft server` nodes on 127.0.0.1 (scripts/cluster.sh, data in a temporary dir), runs the
# example `order` worker against all three, starts orders, SIGKILLs the node that leads the
# most shards while the orders wait for approval, approves them through the surviving nodes
# and prints each result; then restarts the killed node and shows it caught up. Stops
# everything it started.
#
#   WEFT_DEMO_PORT_BASE (default 7470): node N serves on 127.0.0.1:$((BASE+N)).
#   WEFT_DEMO_ORDERS (default 6): how many orders.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p weft --bin weft -p weft-sdk --example order 2>&1 | tail -n 3
target="${CARGO_TARGET_DIR:-target}"
weft="$target/release/weft"
orders="${WEFT_DEMO_ORDERS:-6}"
export WEFT_BIN="$weft"
export WEFT_CLUSTER_DIR="$(mktemp -d)"
export WEFT_CLUSTER_PORT_BASE="${WEFT_DEMO_PORT_BASE:-7470}"
export WEFT_CLUSTER_SHARDS=8
servers="$(for n in 1 2 3; do printf '127.0.0.1:%s,' $((WEFT_CLUSTER_PORT_BASE + n)); done)"
servers="${servers%,}"
worker_pid=""
cleanup() {
  # The worker ends on SIGTERM; its status (143) is not the demo's.
  if [ -n "$worker_pid" ]; then kill "$worker_pid" 2>/dev/null || true; wait "$worker_pid" 2>/dev/null || true; fi
  scripts/cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$WEFT_CLUSTER_DIR"
}
trap cleanup EXIT
say() { printf '\n=== %s\n' "$*"; }

say "starting a three-node cluster ($servers)"
scripts/cluster.sh up | tail -n 1

say "starting the example order worker against all three nodes"
"$target/release/examples/order" --server "$servers" >"$WEFT_CLUSTER_DIR/worker.log" 2>&1 &
worker_pid=$!

say "starting $orders orders (each waits for an approval signal)"
for i in $(seq 1 "$orders"); do
  "$weft" --server "$servers" workflow start order --id "demo-order-$i" --task-queue orders \
    --input "{\"order_id\": \"o-$i\", \"amount_cents\": $((i * 1000)), \"fail_first_charge\": $([ "$i" = 1 ] && echo true || echo false)}"
done

# The node leading the most shards.
victim="$("$weft" --server "$servers" --output json cluster status | python3 -c '
import json, sys, collections
shards = json.load(sys.stdin)["shards"]
print(collections.Counter(s["leader"] for s in shards if s["leader"]).most_common(1)[0][0])')"
say "SIGKILL node $victim, which leads the most shards"
scripts/cluster.sh kill "$victim"

say "approving every order through the surviving nodes, and waiting for each result"
for i in $(seq 1 "$orders"); do
  "$weft" --server "$servers" workflow signal "demo-order-$i" approve --input true >/dev/null
done
for i in $(seq 1 "$orders"); do
  printf 'demo-order-%s: ' "$i"
  "$weft" --server "$servers" workflow result "demo-order-$i"
done
"$weft" --server "$servers" workflow list --type order

say "restarting node $victim: it catches up from the others"
scripts/cluster.sh restart "$victim" | tail -n 1
for _ in $(seq 1 300); do
  lagging="$("$weft" --server "$servers" --output json cluster status | python3 -c '
import json, sys
status = json.load(sys.stdin)
behind = [s for s in status["shards"] if len(s["replicas"]) < 3 or any(r["lag"] for r in s["replicas"])]
print(len(behind))')"
  [ "$lagging" = 0 ] && break
  sleep 0.2
done
"$weft" --server "$servers" cluster status
[ "$lagging" = 0 ] || { echo "node $victim did not catch up" >&2; exit 1; }
say "every order completed through the loss of node $victim, and it caught up"
