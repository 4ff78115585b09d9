#!/usr/bin/env bash
# One run of Weft's fault-injection suite:
#   jepsen/run.sh --nodes 3 --workload all --nemesis all --time 60 --seed 1
# (or --config FILE.toml with the same keys). Installs what it uses (iproute2, nftables,
# faketime, fuse3),
# builds the workspace's release binaries, then runs target/release/weft-jepsen, which starts
# a fresh cluster of real `weft server` processes, each in its own network namespace on a bridge
# it creates, and removes them all when it ends. Needs root (namespaces, nftables).
# The run's folder is jepsen/store/<time>-<workload>-<nemesis>/; the exit code is 1 when a
# checker found a violation, 2 when the run could not be carried out.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "jepsen/run.sh: needs root (network namespaces and nftables rules)" >&2
  exit 2
fi
scripts/setup.sh
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || [ -e /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(faketime)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
target="${CARGO_TARGET_DIR:-target}"
if [ "${WEFT_JEPSEN_NO_BUILD:-}" != 1 ]; then
  cargo build --release --workspace --bins 2>&1 | grep -E '^(error|warning)' -A5 || true
fi
exec "$target/release/weft-jepsen" "$@"
