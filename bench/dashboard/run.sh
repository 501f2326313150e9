#!/usr/bin/env bash
# Dashboard cost benchmark: herald delivering at full speed (REST batches -> spool -> APNs simulator) with no
# dashboard client, then with 20 clients holding the dashboard's event stream open (/dashboard/api/events), in the
# same herald process, alternating, ROUNDS times each. Prints the delivery rates and the cost in percent.
#
# Usage: bench/dashboard/run.sh [NOTIFICATIONS] [ROUNDS]   (defaults 100000 and 3)
# Needs python3 and curl. Builds herald in release mode once. Prints a Markdown summary (also
# target/bench-dashboard.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
ROUNDS=${2:-3}
CLIENTS=20
KEY=bench-dashboard-key
cargo build --release -p herald >&2
HERALD=$PWD/target/release/herald
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
. "$PWD/bench/lib.sh"

"$HERALD" sim pki "$WORK/pki" --topic com.example.dash >/dev/null
"$HERALD" sim --pki "$WORK/pki" > "$WORK/sim.addrs" 2> "$WORK/sim.log" &
PIDS+=("$!")
for _ in $(seq 200); do [ -s "$WORK/sim.addrs" ] && break; sleep 0.05; done
ADMIN=$(j "$WORK/sim.addrs" '["admin"]')
H2=$(j "$WORK/sim.addrs" '["h2"]')

cat > "$WORK/herald.conf" <<CONF
spool_dir = "$WORK/spool"
http_listener {
  api_key = "$KEY"
  listen "127.0.0.1:0" { http_services = ( push dashboard ) }
}
domain "dash.example" {
$(token_auth_options "$WORK/pki" "$H2" com.example.dash)
  max_outbound_connections = 4
}
CONF
"$HERALD" serve -c "$WORK/herald.conf" > "$WORK/herald.addrs" 2> "$WORK/herald.log" &
HERALD_PID=$!; PIDS+=("$HERALD_PID")
# herald's CPU time so far, in clock ticks (utime + stime).
TCK=$(getconf CLK_TCK)
for _ in $(seq 600); do [ -s "$WORK/herald.addrs" ] && break; sleep 0.05; done
HTTP=$(j "$WORK/herald.addrs" '["http"][0]')

# One round: N distinct tokens through REST; prints the rate, N / (first post .. the simulator accepted all of
# them), and herald's CPU microseconds per notification over the round.
round() {
  local base c0 c1; base=$(accepted); c0=$(cpu_ticks "$HERALD_PID")
  python3 -c "
import sys
for i in range(int(sys.argv[1])): print('%064x' % (int(sys.argv[2]) + i))" "$N" "$1" > "$WORK/tokens.csv"
  local t0 t1; t0=$(date +%s.%N)
  HERALD_API_KEY=$KEY "$HERALD" send --url "http://$HTTP" --domain dash.example \
    --file "$WORK/tokens.csv" --payload '{"aps":{"alert":"dash"}}' --batch 1000 --parallel 8 > "$WORK/send.out" \
    || { echo "herald send failed:" >&2; cat "$WORK/send.out" >&2; exit 1; }
  wait_accepted $((base + N)) 0.02
  t1=$(date +%s.%N); c1=$(cpu_ticks "$HERALD_PID")
  awk -v n="$N" -v a="$t0" -v b="$t1" -v c="$((c1 - c0))" -v hz="$TCK" 'BEGIN{printf "%.0f/%.2f", n/(b-a), c*1e6/hz/n}'
}

open_clients() {
  CLIENT_PIDS=()
  for c in $(seq "$CLIENTS"); do
    curl -sN -H "authorization: Bearer $KEY" "http://$HTTP/dashboard/api/events" >> "$WORK/events.$c" &
    CLIENT_PIDS+=("$!"); PIDS+=("$!")
  done
}
close_clients() { kill "${CLIENT_PIDS[@]}" 2>/dev/null || true; wait "${CLIENT_PIDS[@]}" 2>/dev/null || true; }

round $((0xdd0000000000)) > /dev/null   # warm-up
NONE=(); WITH=(); TICKS=0
# The order alternates between rounds, so that neither setting always runs on a warmer process.
with_clients() { open_clients; measure x round $((0xdf0000000000 + r * 0x10000000)); WITH+=("$x"); close_clients; }
without() { measure x round $((0xde0000000000 + r * 0x10000000)); NONE+=("$x"); }
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then without; with_clients; else with_clients; without; fi
done
TICKS=$(cat "$WORK"/events.* | grep -c '^event: tick' || true)
rates() { for x in "$@"; do echo "${x%/*}"; done; }
cpus() { for x in "$@"; do echo "${x#*/}"; done; }
m0=$(rates "${NONE[@]}" | median); m1=$(rates "${WITH[@]}" | median)
c0=$(cpus "${NONE[@]}" | median); c1=$(cpus "${WITH[@]}" | median)
cost=$(awk -v a="$m0" -v b="$m1" 'BEGIN{printf "%.1f", (a-b)*100/a}')
cpu_cost=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.1f", (b-a)*100/a}')
{
  echo "| dashboard clients | runs (notifications/s / herald CPU µs per notification) | median rate | median CPU µs |"
  echo "|---|---|---|---|"
  echo "| none | ${NONE[*]} | $m0 | $c0 |"
  echo "| $CLIENTS event streams | ${WITH[*]} | $m1 | $c1 |"
  echo
  echo "cost: $cost % of the delivery rate, $cpu_cost % of herald's CPU per notification (goal < 5 %);"
  echo "$TICKS ticks received by the clients; $N notifications per run, $ROUNDS rounds; load average $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee target/bench-dashboard.md
