#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build Weft: clang and libclang
# (RocksDB's bindings are generated with bindgen). protoc is vendored by the
# protoc-bin-vendored crate, so no system protobuf compiler is needed.
set -euo pipefail
missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v cargo >/dev/null 2>&1 || { echo "error: cargo (Rust 1.95+) is required: https://rustup.rs" >&2; exit 1; }
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
