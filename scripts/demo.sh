#!/usr/bin/env bash
# From a fresh clone to a running node: builds Weft, starts `weft dev` on a
# fresh data dir, runs the example `order` worker, starts three orders and
# approves them, and prints each result. Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p weft --bin weft -p weft-sdk --example order 2>&1 | tail -n 3
target="${CARGO_TARGET_DIR:-target}"
data_dir="$(mktemp -d)"
addr="127.0.0.1:${WEFT_DEMO_PORT:-7470}"
"$target/release/weft" dev --data-dir "$data_dir" --listen "$addr" --metrics-listen 127.0.0.1:0 &
node_pid=$!
trap 'kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; rm -rf "$data_dir"' EXIT
for _ in $(seq 1 100); do
  "$target/release/weft" --server "$addr" cluster status >/dev/null 2>&1 && break
  sleep 0.1
done
"$target/release/weft" --server "$addr" cluster status
"$target/release/examples/order" --server "http://$addr" --start 3 --exit-after-start
"$target/release/weft" --server "$addr" workflow list
