#!/usr/bin/env bash
# Installs what the tests need, then runs every test: unit, golden and the root-only
# network-namespace tests (marked #[ignore = "needs root"], included here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --workspace --all-targets
cargo test --workspace -- --include-ignored
