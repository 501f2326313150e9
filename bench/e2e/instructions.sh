#!/usr/bin/env bash
# Instructions, not seconds: two herald builds end to end (REST batches -> fsync'd spool -> queue -> APNs simulator),
# each `herald serve` run under `valgrind --tool=callgrind`, which counts the instructions herald executes. The count
# for the same build and input moves by well under a percent from run to run whatever else the machine is doing, so
# a difference of a few percent between builds shows here where wall-clock rates (spread 34k-53k/s on a shared
# 2-core machine) cannot show it. Per build it prints herald's instructions per notification (idle start-up and
# shutdown included, measured once with no traffic and subtracted) and keeps the callgrind files for
# `callgrind_annotate`, which names the functions the difference comes from.
#
# Usage: bench/e2e/instructions.sh BASE_BINARY NEW_BINARY [N] [RUNS]   (defaults 20000 and 2)
# Needs valgrind, python3 and curl. The simulator runs natively (the first binary's). LOGS=1 and SIM_ARGS as in
# compare.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=$1
NEW=$2
N=${3:-20000}
RUNS=${4:-2}
HERALD=$BASE
WORK=$(mktemp -d)
OUT=${OUT:-target/bench-e2e-instructions}
mkdir -p "$OUT"
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

# one_run BINARY COUNT CALLGRIND_FILE: runs herald under callgrind, sends COUNT notifications (none for 0), waits for
# the simulator to accept them, stops herald and prints the instructions it executed.
one_run() {
  local bin=$1 count=$2 file=$3 before pid http
  rm -rf "$WORK/spool" "$WORK/herald.addrs" "$WORK/mainlog.ec" "$WORK/apn.log"
  valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" serve -c "$WORK/herald.conf" \
    > "$WORK/herald.addrs" 2> "$WORK/herald.log" &
  pid=$!; PIDS+=("$pid")
  for _ in $(seq 1200); do [ -s "$WORK/herald.addrs" ] && break; sleep 0.1; done
  if [ ! -s "$WORK/herald.addrs" ]; then echo "$bin did not start:" >&2; cat "$WORK/herald.log" >&2; exit 1; fi
  http=$(j "$WORK/herald.addrs" '["http"][0]')
  if [ "$count" -gt 0 ]; then
    before=$(accepted)
    head -n "$count" "$WORK/tokens.csv" > "$WORK/these.csv"
    "$BASE" send --url "http://$http" --domain e2e.example --file "$WORK/these.csv" \
      --payload '{"aps":{"alert":"e2e"}}' --batch 1000 --parallel 8 > "$WORK/send.out" \
      || { echo "herald send to $bin failed:" >&2; cat "$WORK/send.out" >&2; exit 1; }
    wait_accepted $((before + count)) 0.2
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/ {print $2; exit}' "$file"
}

declare -A PER
for which in base new; do
  bin=$BASE; [ "$which" = new ] && bin=$NEW
  measure idle one_run "$bin" 0 "$OUT/$which.idle.callgrind"
  echo "$which: idle start and stop $idle instructions" >&2
  for r in $(seq "$RUNS"); do
    measure total one_run "$bin" "$N" "$OUT/$which.$r.callgrind"
    per=$(( (total - idle) / N ))
    echo "$which: $total instructions, $per per notification" >&2
    PER[$which]+="$per "
  done
done
{
  echo "| build | instructions per notification | median |"
  echo "|---|---|---|"
  for which in base new; do
    bin=$BASE; [ "$which" = new ] && bin=$NEW
    echo "| $which ($bin) | ${PER[$which]}| $(printf '%s\n' ${PER[$which]} | median) |"
  done
} | tee "$OUT/summary.md"
echo "callgrind files in $OUT (callgrind_annotate --inclusive=no FILE | head -40)" >&2
