#!/usr/bin/env bash
# What quiet domains cost: one herald serves DOMAINS apps (one regex domain stanza, provider-token auth against the
# simulator). Measures herald's CPU (utime+stime from /proc) over SECONDS while nothing is sent, first before any
# domain saw traffic (the reference: the process alone), then after one notification went to each domain, all were
# delivered and every connection closed on its idle timeout: what the resting queues (task, pool, counters) cost
# while quiet. Then WAVES-1 more waves of DOMAINS new domains each (app names never used before), the resident
# memory taken after each wave once its queues retired: whether memory grows with every app ever seen or only with
# the apps in use.
#
# Usage: bench/domains/run.sh [DOMAINS] [SECONDS] [HERALD]   (defaults 1000, 20, a release build of this tree)
#   WAVES=N (default 3). RETIRE=S sets idle_queue_timeout = S (default SECONDS + 10, so that the quiet measurement
#   sees resting queues; each wave then waits until herald_queues_running is 0); RETIRE=off leaves the option out
#   (builds without it; queues stay).
# Needs: python3, curl. Prints a Markdown table row (also target/bench-domains.md).
set -euo pipefail
cd "$(dirname "$0")/../.."

DOMAINS=${1:-1000}
SECONDS_QUIET=${2:-20}
WAVES=${WAVES:-3}
RETIRE=${RETIRE:-$((SECONDS_QUIET + 10))}
RETIRE_LINE=
[ "$RETIRE" != off ] && RETIRE_LINE="idle_queue_timeout = $RETIRE"
if [ -n "${3:-}" ]; then
  HERALD=$(realpath "$3")
else
  cargo build --release -p herald >&2
  HERALD=$PWD/target/release/herald
fi
WORK=$(mktemp -d)
SIM_PID= SERVE_PID=
trap 'kill $SERVE_PID $SIM_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$HERALD" sim pki "$WORK/pki" --topic com.example.bench >/dev/null
. "$PWD/bench/lib.sh"
sim_up
H2=$(j "$WORK/addrs" '["h2"]')
ADMIN=$(j "$WORK/addrs" '["admin"]')
cat > "$WORK/bench.conf" <<CONF
spool_dir = "$WORK/spool"
http_listener { listen "127.0.0.1:0" { api_key = "bench" http_services = ( push metrics ) } }
domain "/^app[0-9]+\\.bench\$/" {
$(token_auth_options "$WORK/pki" "$H2" com.example.bench)
  idle_timeout = 1
}
$RETIRE_LINE
CONF
"$HERALD" serve -c "$WORK/bench.conf" > "$WORK/serve.json" 2> "$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 200); do [ -s "$WORK/serve.json" ] && break; sleep 0.05; done
HTTP=$(j "$WORK/serve.json" '["http"][0]')

# quiet_cpu: herald's CPU over SECONDS_QUIET, in percent of one core.
quiet_cpu() {
  local t0 t1 hz
  hz=$(getconf CLK_TCK)
  t0=$(cpu_ticks "$SERVE_PID")
  sleep "$SECONDS_QUIET"
  t1=$(cpu_ticks "$SERVE_PID")
  python3 -c "print(round(100 * ($t1 - $t0) / $hz / $SECONDS_QUIET, 2))"
}
metric_sum() { curl -s -H "Authorization: Bearer bench" "http://$HTTP/metrics" | awk -v m="$1" '$1 ~ "^"m {s += $2} END {print s + 0}'; }

sleep 2
before=$(quiet_cpu)
# wave W: one notification to each of DOMAINS domains never used before; waits until all were delivered and
# their connections closed.
wave() {
  python3 - "$HTTP" "$DOMAINS" "$1" <<'PY'
import sys, urllib.request
http, n, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(w * n, (w + 1) * n):
    body = ('{"domain":"app%d.bench","tokens":["%064x"],"payload":{"aps":{"alert":"x"}}}' % (i, i)).encode()
    req = urllib.request.Request(f"http://{http}/api/v1/push", data=body,
                                 headers={"Authorization": "Bearer bench", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 202, r.status
PY
  wait_accepted "$(( ($1 + 1) * DOMAINS ))" 0.2
  while [ "$(metric_sum herald_connections_open)" != 0 ]; do sleep 0.2; done
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$SERVE_PID/status"; }

wave 0
sleep 2
after=$(quiet_cpu)
rss=()
for w in $(seq 0 $((WAVES - 1))); do
  [ "$w" -gt 0 ] && wave "$w"
  if [ "$RETIRE" != off ] && [ "$RETIRE" != 0 ]; then
    while [ "$(metric_sum herald_queues_running)" != 0 ]; do sleep 0.5; done
  fi
  sleep 2
  rss+=("$(rss_kib)")
done

OUT=target/bench-domains.md
mkdir -p target
{
  echo "| herald | idle_queue_timeout | quiet, no domain used (% of a core) | quiet, $DOMAINS domains used (% of a core) | RSS after each wave of $DOMAINS new domains (KiB) |"
  echo "|---|---|---|---|---|"
  echo "| $("$HERALD" --version) | $RETIRE | $before | $after | ${rss[*]} |"
} | tee "$OUT"
