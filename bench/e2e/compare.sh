#!/usr/bin/env bash
# Two herald builds end to end, one after the other in the same run: REST batches (herald send) -> fsync'd spool ->
# queue -> APNs simulator, N notifications per run, RUNS runs of each build, alternating. Per run it prints the rate
# (first request to the simulator's acceptance of all N), herald's CPU time (user + system, from /proc at its stop)
# and the voluntary context switches of its spool writer thread; then the medians. The payload names no push type,
# so the checks for a Momentum-style submission (push type inferred, then validated) run for each notification.
#
# Usage: bench/e2e/compare.sh BASE_BINARY NEW_BINARY [N] [RUNS]   (defaults 100000 and 4)
# SIM_ARGS in the environment are passed to the simulator (e.g. SIM_ARGS=--apple-settings for the windows APNs was
# seen to use). LOGS=1 in the environment also writes a mainlog and an apn_logger file (an R and a D line per notification, and
# an apn_logger line), so the log writers' cost is in the measure.
# Needs python3 and curl. The first binary also runs the simulator.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=$1
NEW=$2
N=${3:-100000}
RUNS=${4:-4}
HERALD=$BASE
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
. "$PWD/bench/lib.sh"

"$HERALD" sim pki "$WORK/pki" --topic com.example.e2e >/dev/null
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SIM_PORT=$(free_port)
"$HERALD" sim --pki "$WORK/pki" --h2-port "$SIM_PORT" ${SIM_ARGS:-} > "$WORK/sim.addrs" 2> "$WORK/sim.log" &
PIDS+=("$!")
for _ in $(seq 200); do [ -s "$WORK/sim.addrs" ] && break; sleep 0.05; done
ADMIN=$(j "$WORK/sim.addrs" '["admin"]')

LOGGERS=""
if [ "${LOGS:-0}" = 1 ]; then
  LOGGERS="ec_logger \"main\" { mainlog = \"$WORK/mainlog.ec\" }
apn_logger \"apn\" { logfile = \"$WORK/apn.log\" }"
fi
cat > "$WORK/herald.conf" <<CONF
spool_dir = "$WORK/spool"
$LOGGERS
http_listener { listen "127.0.0.1:0" { } }
domain "e2e.example" {
$(token_auth_options "$WORK/pki" "127.0.0.1:$SIM_PORT" com.example.e2e)
  max_outbound_connections = 4
}
CONF
python3 -c "
import sys
for i in range(int(sys.argv[1])): print('%064x' % (0xe2e000000000 + i))" "$N" > "$WORK/tokens.csv"

# one_run BINARY: prints "rate cpu_seconds writer_switches".
one_run() {
  local bin=$1 before t0 t1 pid http cpu switches
  rm -rf "$WORK/spool" "$WORK/herald.addrs" "$WORK/mainlog.ec" "$WORK/apn.log"
  "$bin" serve -c "$WORK/herald.conf" > "$WORK/herald.addrs" 2> "$WORK/herald.log" &
  pid=$!; PIDS+=("$pid")
  for _ in $(seq 600); do [ -s "$WORK/herald.addrs" ] && break; sleep 0.05; done
  if [ ! -s "$WORK/herald.addrs" ]; then echo "$bin did not start:" >&2; cat "$WORK/herald.log" >&2; exit 1; fi
  http=$(j "$WORK/herald.addrs" '["http"][0]')
  before=$(accepted)
  t0=$(date +%s.%N)
  "$bin" send --url "http://$http" --domain e2e.example --file "$WORK/tokens.csv" --payload '{"aps":{"alert":"e2e"}}' \
    --batch 1000 --parallel 8 > "$WORK/send.out" \
    || { echo "herald send to $bin failed:" >&2; cat "$WORK/send.out" >&2; exit 1; }
  wait_accepted $((before + N))
  t1=$(date +%s.%N)
  cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat")
  switches=0
  for t in /proc/"$pid"/task/*; do
    if [ "$(cat "$t/comm")" = spool-writer ]; then
      switches=$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")
    fi
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk -v n="$N" -v a="$t0" -v b="$t1" -v c="$cpu" -v s="$switches" 'BEGIN{printf "%.0f %s %s", n/(b-a), c, s}'
}

declare -A RATES CPUS
for _ in $(seq "$RUNS"); do
  for which in base new; do
    bin=$BASE; [ "$which" = new ] && bin=$NEW
    measure result one_run "$bin"
    read -r rate cpu switches <<< "$result"
    echo "$which: $rate notifications/s, herald CPU $cpu s, spool writer switches $switches" >&2
    RATES[$which]+="$rate "; CPUS[$which]+="$cpu "
  done
done
{
  echo "| build | rate (notifications/s) | median | herald CPU per $N (s) | median |"
  echo "|---|---|---|---|---|"
  for which in base new; do
    bin=$BASE; [ "$which" = new ] && bin=$NEW
    r_med=$(printf '%s\n' ${RATES[$which]} | median)
    c_med=$(printf '%s\n' ${CPUS[$which]} | median)
    echo "| $which ($bin) | ${RATES[$which]}| $r_med | ${CPUS[$which]}| $c_med |"
  done
} | tee target/bench-e2e-compare.md
