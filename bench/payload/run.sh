#!/usr/bin/env bash
# Benchmark: the payload checks every accepted notification goes through (`infer_push_type` when the sender named no
# push type, then `validate`), per call, against serde_json reading the same payload into a `Value` in the same run.
# With a git revision, also measures that revision's checks with the same program (in a temporary worktree), so the
# two builds run one after the other on the same machine.
#
# Usage: bench/payload/run.sh [ITERATIONS] [REVISION]   (defaults 1000000, none)
set -euo pipefail
cd "$(dirname "$0")/../.."
ITERATIONS=${1:-1000000}
REV=${2:-}
echo "### this tree ($(git rev-parse --short HEAD))"
cargo run -q --release -p herald-apns --example payload_bench -- "$ITERATIONS"
if [ -n "$REV" ]; then
  WORK=$(mktemp -d)
  trap 'git worktree remove --force "$WORK/tree" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
  git worktree add -q --detach "$WORK/tree" "$REV"
  mkdir -p "$WORK/tree/crates/herald-apns/examples"
  cp crates/herald-apns/examples/payload_bench.rs "$WORK/tree/crates/herald-apns/examples/"
  echo
  echo "### $REV"
  (cd "$WORK/tree" && CARGO_TARGET_DIR="$PWD/../target" cargo run -q --release -p herald-apns --example payload_bench -- "$ITERATIONS")
fi
