#!/usr/bin/env bash
# Installs what the tests need, then runs every test: unit, golden and the root-only
# network-namespace tests (marked #[ignore = "needs root"], included here).
# The CNI plugin's input parsing is also fuzzed for a bounded time (FUZZ_SECONDS, default 60)
# when cargo-fuzz is installed (`cargo install cargo-fuzz`); without it, the same checks run
# as bounded randomized tests inside the suite (crates/cni/tests/parse_props.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --workspace --all-targets
cargo test --workspace -- --include-ignored
if cargo fuzz --version >/dev/null 2>&1; then
  (cd crates/cni/fuzz && cargo fuzz run -s none config -- -max_total_time="${FUZZ_SECONDS:-60}")
else
  echo "cargo-fuzz not installed: skipping the 60 s fuzz run of crates/cni/fuzz (parse_props ran instead)"
fi
