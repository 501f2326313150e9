#!/usr/bin/env bash
# Throughput of herald's delivery engine against a slow APNs simulator, next to the same run with no latency:
# the simulator answering after 30 ms, and the simulator processing only 1,000 requests/s (the rest wait their
# turn, as at a busy server). Reports notifications/s and duplicates (deliveries the simulator accepted beyond the
# notifications sent; goal 0), medians of RUNS runs, 4 connections, provider-token auth.
#
# Usage: bench/slow/run.sh [RUNS] [N]   (defaults 5 and 20000)
# Needs: python3, curl. Builds herald in release mode once. Prints a Markdown table (also target/bench-slow.md).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${1:-5}
N=${2:-20000}
cargo build --release -p herald >&2
HERALD=$PWD/target/release/herald
WORK=$(mktemp -d)
SIM_PID=
trap 'kill $SIM_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$HERALD" sim pki "$WORK/pki" --topic com.example.bench >/dev/null
. "$PWD/bench/lib.sh"

start_sim() {
  sim_up "$@"
  H2=$(j "$WORK/addrs" '["h2"]')
  ADMIN=$(j "$WORK/addrs" '["admin"]')
  cat > "$WORK/bench.conf" <<CONF
domain "slow.bench" {
$(token_auth_options "$WORK/pki" "$H2" com.example.bench)
  max_outbound_connections = 4
}
CONF
}

# settled: the simulator's accepted count once it stops changing (requests herald cancelled may still be in its
# queue after herald is done; they are processed all the same).
settled() {
  local last now
  last=$(accepted)
  while :; do
    sleep 0.3
    now=$(accepted)
    [ "$now" = "$last" ] && break
    last=$now
  done
  echo "$now"
}

OUT=target/bench-slow.md
{
  echo "| simulator | herald notifications/s (median of $RUNS × $N) | duplicates (median, max) | streams herald cancelled (all runs) |"
  echo "|---|---|---|---|"
} > "$OUT"
for case in "no latency|" "30 ms latency|--latency-ms 30" "1,000 requests/s|--rate 1000"; do
  label=${case%%|*}
  # shellcheck disable=SC2086
  start_sim ${case#*|}
  rates=() dups=() cancelled=0
  for _ in $(seq "$RUNS"); do
    before=$(accepted)
    out=$("$HERALD" bench -c "$WORK/bench.conf" --domain slow.bench -n "$N" --json)
    delivered=$(j /dev/stdin '["delivered"]' <<<"$out")
    [ "$delivered" = "$N" ] || { echo "only $delivered of $N delivered: $out" >&2; exit 1; }
    after=$(settled)
    rates+=("$(j /dev/stdin '["per_second"]' <<<"$out")")
    dups+=("$(( after - before - N ))")
  done
  c=$(curl -s "http://$ADMIN/stats" | j /dev/stdin '["streams"]["cancelled"]')
  r=$(printf '%s\n' "${rates[@]}" | median)
  d=$(printf '%s\n' "${dups[@]}" | median)
  m=$(printf '%s\n' "${dups[@]}" | sort -g | tail -1)
  printf '| %s | %.0f | %s, %s | %s |\n' "$label" "$r" "$d" "$m" "$c" | tee -a "$OUT"
done
