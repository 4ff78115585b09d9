#!/usr/bin/env bash
# Runs every check: formatting, clippy (warnings are errors) and all tests
# (unit, property, in-process integration, and the end-to-end tests in tests/
# that SIGKILL, pause and wipe real `weft` processes and three-node clusters). Everything builds with the release profile, so RocksDB's
# C++ is compiled once and serves the binaries, the benchmark and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# The end-to-end tests (package weft-e2e) spawn target/release/weft: a --workspace test run
# builds every binary of the workspace before it runs any test, so no separate build is needed.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --no-fail-fast
else
  cargo test --release --workspace --no-fail-fast
fi
