#!/usr/bin/env bash
# Outcomes benchmark.
# 1. End-to-end throughput (REST -> spool -> APNs simulator) with status retention and an outcome webhook receiver
#    enabled, against both disabled (outcome_retention = 0, no webhook), alternating in the same run: N notifications
#    per run, RUNS runs each; reports the medians and their ratio (goal >= 0.8).
# 2. Status lookups per second (GET /api/v1/notifications/{id}, h2load over h2c) for ids in a store of LOOKUP_SPOOL
#    finished outcomes.
#
# Usage: bench/outcomes/run.sh [N] [RUNS] [LOOKUP_SPOOL]   (defaults 100000, 3, 1000000)
# Needs python3, curl and h2load. Builds herald in release mode once. Prints a Markdown summary (also
# target/bench-outcomes.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
RUNS=${2:-3}
SPOOL_N=${3:-1000000}
cargo build --release -p herald >&2
HERALD=$PWD/target/release/herald
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
. "$PWD/bench/lib.sh"

"$HERALD" sim pki "$WORK/pki" --topic com.example.outcomes >/dev/null
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SIM_PORT=$(free_port)
"$HERALD" sim --pki "$WORK/pki" --h2-port "$SIM_PORT" > "$WORK/sim.addrs" 2> "$WORK/sim.log" &
PIDS+=("$!")
for _ in $(seq 200); do [ -s "$WORK/sim.addrs" ] && break; sleep 0.05; done
ADMIN=$(j "$WORK/sim.addrs" '["admin"]')

python3 bench/outcomes/receiver.py bench > "$WORK/receiver.port" &
PIDS+=("$!")
for _ in $(seq 200); do [ -s "$WORK/receiver.port" ] && break; sleep 0.05; done
RECEIVER="127.0.0.1:$(head -1 "$WORK/receiver.port")"

# write_conf on|off
write_conf() {
  local hook="" retention=0
  if [ "$1" = on ]; then
    retention=86400
    hook="  outcome_webhook_url = \"http://$RECEIVER/hook\"
  outcome_webhook_secret = \"bench\""
  fi
  cat > "$WORK/herald.conf" <<CONF
spool_dir = "$WORK/spool"
outcome_retention = $retention
http_listener { listen "127.0.0.1:0" { } }
domain "outcomes.example" {
$(token_auth_options "$WORK/pki" "127.0.0.1:$SIM_PORT" com.example.outcomes)
  max_outbound_connections = 4
$hook
}
CONF
}
start_herald() {
  rm -f "$WORK/herald.addrs"
  "$HERALD" serve -c "$WORK/herald.conf" > "$WORK/herald.addrs" 2> "$WORK/herald.log" &
  HERALD_PID=$!; PIDS+=("$HERALD_PID")
  for _ in $(seq 600); do [ -s "$WORK/herald.addrs" ] && break; sleep 0.05; done
  HTTP=$(j "$WORK/herald.addrs" '["http"][0]')
}
stop_herald() { kill "$HERALD_PID"; wait "$HERALD_PID" 2>/dev/null || true; }
python3 -c "
import sys
for i in range(int(sys.argv[1])): print('%064x' % (0x0c0e00000000 + i))" "$N" > "$WORK/tokens.csv"

# one_run on|off: prints notifications/s from the first request to the simulator's acceptance of all N.
one_run() {
  write_conf "$1"
  rm -rf "$WORK/spool"
  start_herald
  local before hooks_before t0 t1
  before=$(accepted)
  hooks_before=$(curl -s "http://$RECEIVER/count")
  t0=$(date +%s.%N)
  "$HERALD" send --url "http://$HTTP" --domain outcomes.example --file "$WORK/tokens.csv" \
    --payload '{"aps":{"alert":"outcomes"}}' --batch 1000 --parallel 8 > "$WORK/send.out" \
    || { echo "herald send failed:" >&2; cat "$WORK/send.out" >&2; exit 1; }
  wait_accepted $((before + N))
  t1=$(date +%s.%N)
  # Not timed: the webhook trails delivery; wait (up to 120 s) until the receiver has every outcome of the run,
  # so that the count below says whether each one arrived (the next run starts from an empty spool).
  if [ "$1" = on ]; then
    for _ in $(seq 2400); do [ "$(curl -s "http://$RECEIVER/count")" -ge $((hooks_before + N)) ] && break; sleep 0.05; done
  fi
  stop_herald
  awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}'
}

OFF=(); ON=()
for _ in $(seq "$RUNS"); do
  measure rate one_run off; OFF+=("$rate")
  measure rate one_run on; ON+=("$rate")
done
off_med=$(printf '%s\n' "${OFF[@]}" | median)
on_med=$(printf '%s\n' "${ON[@]}" | median)
ratio=$(awk -v a="$on_med" -v b="$off_med" 'BEGIN{printf "%.2f", a/b}')
hooks=$(curl -s "http://$RECEIVER/count")
bad=$(curl -s "http://$RECEIVER/bad")

# Status lookups in a store of SPOOL_N finished outcomes.
write_conf on
sed -i '/outcome_webhook/d' "$WORK/herald.conf"
rm -rf "$WORK/spool"
start_herald
python3 -c "
import sys
for i in range(int(sys.argv[1])): print('%064x' % (0x0c0f00000000 + i))" "$SPOOL_N" > "$WORK/many.csv"
before=$(accepted)
"$HERALD" send --url "http://$HTTP" --domain outcomes.example --file "$WORK/many.csv" \
  --payload '{"aps":{"alert":"lookups"}}' --batch 1000 --parallel 8 --ids > "$WORK/many.out"
wait_accepted $((before + SPOOL_N)) 0.1
# Wait until the store holds them all.
outcomes_stored() { curl -sf "http://$HTTP/metrics" | awk '/^herald_outcomes_stored /{print $2}'; }
wait_at_least "herald to store $SPOOL_N outcomes" "$SPOOL_N" 0.1 outcomes_stored
grep -E '^  [0-9A-F]{2}/' "$WORK/many.out" | shuf -n 100000 --random-source=<(yes) \
  | sed "s|^  \(.*\)|http://$HTTP/api/v1/notifications/\1|" > "$WORK/uris"
h2load -i "$WORK/uris" -n 100000 -c 8 -m 16 -t 1 > "$WORK/h2load.out" 2>&1
lookups=$(awk '/^finished in/{gsub(",","",$4); print $4}' "$WORK/h2load.out" | head -1)
ok=$(awk '/^status codes:/{print $3}' "$WORK/h2load.out" | head -1)
stop_herald

{
  echo "| measure | runs | median |"
  echo "|---|---|---|"
  echo "| $N notifications, REST to the simulator, status lookups and webhooks off | ${OFF[*]} | $off_med notifications/s |"
  echo "| the same with status retention and a webhook receiver | ${ON[*]} | $on_med notifications/s |"
  echo "| ratio (goal >= 0.8) | | $ratio |"
  echo "| outcomes the webhook receiver got (requests with a bad signature: $bad) | $hooks | $((N * RUNS)) expected |"
  echo "| status lookups, 100,000 random ids of $SPOOL_N finished outcomes (h2load -c 8 -m 16) | 2xx: $ok | $lookups lookups/s |"
} | tee target/bench-outcomes.md
