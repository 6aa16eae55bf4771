#!/usr/bin/env bash
# Installs what the tests need, then runs every test: unit, golden and the root-only
# network-namespace tests (marked #[ignore = "needs root"], included here).
# Then the CNI plugin's input parsing (network config, runtimeConfig, CNI_ARGS) is fuzzed for a
# bounded time (FUZZ_SECONDS, default 60; 0 skips it), and the mesh control protocol's frame
# decoder and hello parser for half that each, installing cargo-fuzz first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --workspace --all-targets
cargo test --workspace -- --include-ignored
if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
  cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz
  (cd crates/cni/fuzz && cargo fuzz run -s none config -- -max_total_time="${FUZZ_SECONDS:-60}")
  for target in frames hello; do
    (cd crates/mesh/fuzz && cargo fuzz run -s none "$target" -- -max_total_time="$(( ${FUZZ_SECONDS:-60} / 2 ))")
  done
fi
