#!/usr/bin/env bash
# Runs the baseline benches for BENCHMARKS.md: the code at commit 439ac09 (before the
# transport-neutral projector and the register-resident fold), measured with this
# checkout's bench support (same inputs, sink store, CPU-time measurement) and apply bench.
# Makes a detached worktree of that commit (BASELINE_DIR, default /tmp/tally-baseline-439ac09),
# adds the two bench dev-dependencies the old manifest lacks, and passes its arguments to
# criterion. Use the same CARGO_TARGET_DIR as for the current benches: dependencies are
# shared, only tally is rebuilt.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
base=${BASELINE_DIR:-/tmp/tally-baseline-439ac09}
[ -d "$base" ] || git -C "$root" worktree add --detach "$base" 439ac09
cp "$root/benches/support/mod.rs" "$base/benches/support/mod.rs"
cp "$root/benches/apply.rs" "$base/benches/apply.rs"
cp "$root/benches/baseline/projector_lambda_439ac09.rs" "$base/benches/projector_lambda.rs"
cd "$base"
if ! grep -q 'name = "projector_lambda"' Cargo.toml; then
  sed -i 's/^\[dev-dependencies\]$/[dev-dependencies]\nlibc = "0.2.191"\nserde_path_to_error = "0.1.20"/' Cargo.toml
  printf '\n[[bench]]\nname = "projector_lambda"\nharness = false\n' >> Cargo.toml
fi
cargo bench --bench apply --bench projector_lambda -- "$@"
