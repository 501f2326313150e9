#!/usr/bin/env bash
# Crash benchmark: 100,000 notifications over REST while the APNs simulator takes deliveries, `kill -9` of
# `herald serve` once a random number of them were acknowledged, restart on the same spool. Every acknowledged
# notification must reach the simulator at least once (lost = 0); duplicates are allowed (at-least-once) and
# counted. The work is the integration test `a_kill_9_at_a_random_moment_loses_nothing_that_was_acknowledged`
# in crates/herald/tests/serve.rs, built in release mode.
#
# Usage: bench/crash.sh [RUNS] [NOTIFICATIONS]   (defaults 3 and 100000)
# Each run draws a fresh seed (HERALD_CRASH_SEED) for the kill point; a failing run prints its seed for replay.
# Prints one `crash:` line per run (also target/bench-crash.txt); exits non-zero if any run lost anything.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
N=${2:-100000}
TEST=a_kill_9_at_a_random_moment_loses_nothing_that_was_acknowledged
cargo test --release -p herald --test serve --no-run >&2
OUT=target/bench-crash.txt
: > "$OUT"
failed=0
for run in $(seq "$RUNS"); do
  seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
  log=$(mktemp)
  if HERALD_CRASH_SEED=$seed HERALD_CRASH_COUNT=$N \
    cargo test -q --release -p herald --test serve "$TEST" -- --exact --nocapture > "$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed=1
  fi
  line=$(grep -o 'crash: seed=.*' "$log" | tail -1 || true)
  if [ -z "$line" ] || [ "$status" = FAILED ]; then
    echo "run $run (seed $seed): $status" >&2
    cat "$log" >&2
  fi
  echo "${line:-crash: seed=$seed run=$run $status (no result line)}" | tee -a "$OUT"
  # The test asserts lost=0; check the printed figure as well.
  case "$line" in *" lost=0 "*) ;; *) failed=1 ;; esac
  rm -f "$log"
done
exit "$failed"
