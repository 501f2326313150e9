#!/usr/bin/env bash
# End-to-end benchmark: REST batches (herald send) -> fsync'd spool -> queue -> APNs simulator, and the restart of a
# herald holding N spooled notifications (time from start until delivery resumes).
#
# Usage: bench/e2e/run.sh [NOTIFICATIONS] [SPOOLED]   (defaults 200000 and 1000000)
# Needs python3. Builds herald in release mode once. Prints a Markdown summary (also target/bench-e2e.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200000}
SPOOLED=${2:-1000000}
cargo build --release -p herald >&2
HERALD=$PWD/target/release/herald
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
. "$PWD/bench/lib.sh"

"$HERALD" sim pki "$WORK/pki" --topic com.example.e2e >/dev/null
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SIM_PORT=$(free_port)
start_sim() {
  "$HERALD" sim --pki "$WORK/pki" --h2-port "$SIM_PORT" > "$WORK/sim.addrs" 2> "$WORK/sim.log" &
  SIM_PID=$!; PIDS+=("$SIM_PID")
  for _ in $(seq 200); do [ -s "$WORK/sim.addrs" ] && break; sleep 0.05; done
  ADMIN=$(j "$WORK/sim.addrs" '["admin"]')
}

cat > "$WORK/herald.conf" <<CONF
spool_dir = "$WORK/spool"
http_listener { listen "127.0.0.1:0" { } }
domain "e2e.example" {
$(token_auth_options "$WORK/pki" "127.0.0.1:$SIM_PORT" com.example.e2e)
  max_outbound_connections = 4
  retry_interval = 1
  max_retry_interval = 1
  mx_failures_to_delay = 0
}
CONF
start_herald() {
  "$HERALD" serve -c "$WORK/herald.conf" > "$WORK/herald.addrs" 2> "$WORK/herald.log" &
  HERALD_PID=$!; PIDS+=("$HERALD_PID")
  for _ in $(seq 600); do [ -s "$WORK/herald.addrs" ] && break; sleep 0.05; done
  HTTP=$(j "$WORK/herald.addrs" '["http"][0]')
}
python3 -c "
import sys
for i in range(int(sys.argv[1])): print('%064x' % (0xe2e000000000 + i))" "$N" > "$WORK/tokens.csv"

start_sim
start_herald
t0=$(date +%s.%N)
"$HERALD" send --url "http://$HTTP" --domain e2e.example --file "$WORK/tokens.csv" --payload '{"aps":{"alert":"e2e"}}' \
  --batch 1000 --parallel 8 > "$WORK/send.out"
t1=$(date +%s.%N)
wait_accepted "$N"
t2=$(date +%s.%N)
kill "$HERALD_PID"; wait "$HERALD_PID" 2>/dev/null || true
accept_rate=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')
e2e_rate=$(awk -v n="$N" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')

# Restart with SPOOLED notifications in the spool: APNs is down while they are accepted.
kill "$SIM_PID"; wait "$SIM_PID" 2>/dev/null || true
rm -rf "$WORK/spool"
python3 -c "
import sys
for i in range(int(sys.argv[1])): print('%064x' % (0xe2f000000000 + i))" "$SPOOLED" > "$WORK/spooled.csv"
start_herald
"$HERALD" send --url "http://$HTTP" --domain e2e.example --file "$WORK/spooled.csv" --payload '{"aps":{"alert":"restart"}}' \
  --batch 1000 --parallel 8 > "$WORK/send2.out"
kill "$HERALD_PID"; wait "$HERALD_PID" 2>/dev/null || true
start_sim
r0=$(date +%s.%N)
start_herald
wait_accepted 1 0.01
r1=$(date +%s.%N)
resume=$(awk -v a="$r0" -v b="$r1" 'BEGIN{printf "%.2f", b-a}')
# The backlog is queued again in the background while delivery runs: time until all of it reached the simulator.
wait_accepted "$SPOOLED" 0.1
r2=$(date +%s.%N)
drained=$(awk -v a="$r0" -v b="$r2" 'BEGIN{printf "%.1f", b-a}')
backlog_rate=$(awk -v n="$SPOOLED" -v a="$r0" -v b="$r2" 'BEGIN{printf "%.0f", n/(b-a)}')

{
  echo "| measure | result |"
  echo "|---|---|"
  echo "| $N notifications over REST, acknowledged (durable) | $accept_rate notifications/s |"
  echo "| $N notifications, REST to the simulator's acceptance | $e2e_rate notifications/s |"
  echo "| restart with $SPOOLED spooled: start to first delivery | $resume s |"
  echo "| restart with $SPOOLED spooled: start until all delivered | $drained s ($backlog_rate notifications/s) |"
} | tee target/bench-e2e.md
