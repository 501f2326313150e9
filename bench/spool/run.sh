#!/usr/bin/env bash
# Spool benchmark: group-commit appends (1/8/64 writers), removes, reschedules, recovery of 1M records (clean and
# after kill -9) and disk size, for redb (with and without quick-repair) and fjall. Results go to BENCHMARKS.md "## Spool".
# Usage: bench/spool/run.sh [--engines redb,redb-qr,fjall] [--seconds 3] [--records 1000000]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p herald-spool --example spool_bench
exec target/release/examples/spool_bench "$@"
