#!/usr/bin/env bash
# The etcd backend (feature `etcd`, issue #15): installs protoc (etcd-client
# builds its gRPC code with it) and etcd 3.4 when missing, then runs the
# backend's engine checks and the two-store/two-server tests. The tests
# start (and stop) their own single-member etcd on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v etcd >/dev/null || missing+=(etcd-server)
if ((${#missing[@]})); then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== cargo clippy --features etcd"
cargo clippy --all-targets --features etcd -- -D warnings

echo "== the etcd backend against etcd $(etcd --version | head -1)"
cargo test --features etcd --lib store::etcd_backend
cargo test --features etcd --test etcd
