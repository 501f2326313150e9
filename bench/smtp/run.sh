#!/bin/sh
# SMTP throughput: postfix's smtp-source (Debian package postfix) sends MCMT messages, one push notification each,
# to herald's ESMTP listener, which delivers them to the APNs simulator (HTTP/2, token auth) through the engine.
# The listener runs inside the ignored test `bench_smtp_source` of crates/herald/tests/smtp.rs (no spool: the
# NotDurable intake), so this measures the listener, MCMT parsing, validation and delivery, not fsync.
#
#   bench/smtp/run.sh [MESSAGES] [SESSIONS]      (defaults 50000 and 32)
set -eu
cd "$(dirname "$0")/../.."
command -v smtp-source >/dev/null || { echo "smtp-source not found: apt-get install postfix" >&2; exit 1; }
SMTP_BENCH_MESSAGES="${1:-50000}" SMTP_BENCH_SESSIONS="${2:-32}" \
  cargo test --release -p herald --test smtp -- --ignored --nocapture bench_smtp_source 2>&1 |
  grep -E '^smtp-source:|test result|panicked'
