#!/usr/bin/env bash
# Runs every check: formatting, clippy (warnings are errors) and all tests
# (unit, property, in-process integration, and crash tests that SIGKILL real
# `weft` processes). Everything builds with the release profile, so RocksDB's
# C++ is compiled once and serves the binaries, the benchmark and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# The crash tests spawn the `weft` binary; cargo builds it for the integration tests
# (CARGO_BIN_EXE_weft) with the workspace's features, so no separate build is needed.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --no-fail-fast
else
  cargo test --release --workspace --no-fail-fast
fi
