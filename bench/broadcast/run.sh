#!/usr/bin/env bash
# Broadcast pushes against device pushes through `herald serve` to the APNs simulator, side by side in one run:
# N single-notification REST requests to POST /api/v1/push (one device token each) and N requests to
# POST /api/v1/broadcast (one channel), both sent by h2load over h2c with the same concurrency, alternating,
# RUNS rounds. Each rate is N divided by the time from the first request until the simulator has accepted all N;
# prints the medians and broadcast / device (a broadcast is one request, like one device push: expect about 1).
#
# Usage: bench/broadcast/run.sh [N] [RUNS]   (defaults 20000, 3)
# Needs python3, curl and h2load. Builds herald in release mode once. Writes target/bench-broadcast.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
RUNS=${2:-3}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
cargo build --release -p herald >&2
HERALD=$PWD/target/release/herald
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
. "$PWD/bench/lib.sh"

TOPIC=com.example.broadcast
"$HERALD" sim pki "$WORK/pki" --topic "$TOPIC" >/dev/null
"$HERALD" sim --pki "$WORK/pki" > "$WORK/sim.addrs" 2> "$WORK/sim.log" &
PIDS+=("$!")
for _ in $(seq 200); do [ -s "$WORK/sim.addrs" ] && break; sleep 0.05; done
ADMIN=$(j "$WORK/sim.addrs" '["admin"]')
H2=$(j "$WORK/sim.addrs" '["h2"]')
MANAGE=$(j "$WORK/sim.addrs" '["management"]')
BCAST=$(j "$WORK/sim.addrs" '["broadcast"]')

cat > "$WORK/herald.conf" <<CONF
spool_dir = "$WORK/spool"
http_listener { listen "127.0.0.1:0" { } }
domain "live.example" {
$(token_auth_options "$WORK/pki" "$H2" "$TOPIC")
  apn_channel_route = "https://$MANAGE"
  apn_broadcast_route = "https://$BCAST"
  max_outbound_connections = 4
}
CONF
"$HERALD" serve -c "$WORK/herald.conf" > "$WORK/herald.addrs" 2> "$WORK/herald.log" &
PIDS+=("$!")
for _ in $(seq 600); do [ -s "$WORK/herald.addrs" ] && break; sleep 0.05; done
HTTP=$(j "$WORK/herald.addrs" '["http"][0]')

CHANNEL=$(curl -sf "http://$HTTP/api/v1/channels" -H 'content-type: application/json' \
  -d '{"domain":"live.example","message_storage_policy":1}' | j /dev/stdin '["channel_id"]')
TOKEN=$(printf 'ab%.0s' $(seq 32))
UPDATE='{"aps":{"event":"update","timestamp":1767226500,"content-state":{"score":"1-0"}}}'
printf '{"domain":"live.example","tokens":["%s"],"push_type":"liveactivity","payload":%s}' "$TOKEN" "$UPDATE" > "$WORK/push.json"
printf '{"domain":"live.example","channel_id":"%s","payload":%s}' "$CHANNEL" "$UPDATE" > "$WORK/broadcast.json"

stat() { curl -s "http://$ADMIN/stats" | j /dev/stdin "$1"; }
# run PATH BODY STAT_EXPR: prints notifications/s from the first request until the simulator has N more.
run() {
  local before start end
  before=$(stat "$3")
  start=$(date +%s.%N)
  h2load -n "$N" -c 4 -m 16 -t 1 -d "$2" -H 'content-type: application/json' "http://$HTTP$1" > "$WORK/h2load.out" 2>&1
  grep -q "status codes: $N 2xx" "$WORK/h2load.out" || { cat "$WORK/h2load.out" >&2; exit 1; }
  wait_at_least "the simulator's $3 to reach $((before + N))" $((before + N)) 0.02 stat "$3"
  end=$(date +%s.%N)
  awk -v n="$N" -v a="$start" -v b="$end" 'BEGIN{printf "%.0f\n", n/(b-a)}'
}

dev=() bc=()
for r in $(seq "$RUNS"); do
  if [ $((r % 2)) -eq 1 ]; then
    dev+=("$(run /api/v1/push "$WORK/push.json" '["accepted"]["total"]')")
    bc+=("$(run /api/v1/broadcast "$WORK/broadcast.json" '["broadcast"]["accepted"]')")
  else
    bc+=("$(run /api/v1/broadcast "$WORK/broadcast.json" '["broadcast"]["accepted"]')")
    dev+=("$(run /api/v1/push "$WORK/push.json" '["accepted"]["total"]')")
  fi
  echo "round $r: device ${dev[-1]}/s, broadcast ${bc[-1]}/s" >&2
done
d=$(printf '%s\n' "${dev[@]}" | median); b=$(printf '%s\n' "${bc[@]}" | median)
OUT=target/bench-broadcast.md
{
  echo "| $N requests, one notification each | notifications/s (median of $RUNS) |"
  echo "|---|---|"
  echo "| device pushes, POST /api/v1/push | $d |"
  echo "| broadcasts, POST /api/v1/broadcast | $b |"
  echo
  echo "broadcast / device: $(awk -v a="$b" -v b="$d" 'BEGIN{printf "%.2f", a/b}') (rounds: device ${dev[*]}; broadcast ${bc[*]})"
} | tee "$OUT"
