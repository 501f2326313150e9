# Shell helpers the benchmark scripts source: JSON field reading, the simulator's accepted count and waits on it, the
# median, runs measured in this shell, CPU ticks of processes, and the lines of a domain stanza that deliver to the
# simulator with a test PKI's provider key.

# `set -e` holds inside $( ) too: a command that fails in a function whose output is captured ends that subshell, and
# the assignment of its output then ends the script.
shopt -s inherit_errexit

# j FILE EXPR: prints the JSON value at EXPR (a Python subscript such as '["admin"]') of FILE (/dev/stdin allowed).
j() { python3 -c 'import json,sys;d=json.load(open(sys.argv[1]));print(eval("d"+sys.argv[2]))' "$@"; }

# accepted: notifications the simulator whose admin address is $ADMIN has accepted. Fails, saying so, when the
# simulator gives no count (it has stopped, or $ADMIN is wrong).
accepted() {
  local n
  n=$(curl -sf --max-time 10 "http://$ADMIN/stats" | j /dev/stdin '["accepted"]["total"]' 2>/dev/null) || n=
  case $n in
    '' | *[!0-9]*)
      echo "bench: no count of accepted notifications from the simulator at http://$ADMIN/stats (has it stopped?)" >&2
      return 1 ;;
  esac
  echo "$n"
}

# wait_at_least WHAT TARGET INTERVAL COMMAND…: runs COMMAND every INTERVAL seconds until it prints a count of at least
# TARGET. Ends the script (status 1, with a message naming WHAT) when COMMAND fails or prints something else than a
# count, or when the count has not grown for $BENCH_STALL seconds (default 120): a count that stopped will not get
# there, and a measure taken after such a wait would be wrong.
wait_at_least() {
  local what=$1 target=$2 interval=$3 n last= since=$SECONDS limit=${BENCH_STALL:-120}
  shift 3
  while :; do
    if ! n=$("$@"); then
      echo "bench: waiting for $what: \`$*\` failed" >&2
      exit 1
    fi
    case $n in
      '' | *[!0-9]*)
        echo "bench: waiting for $what: \`$*\` printed ${n:-nothing}, not a count" >&2
        exit 1 ;;
    esac
    [ "$n" -ge "$target" ] && return 0
    if [ "$n" != "$last" ]; then
      last=$n since=$SECONDS
    elif [ $((SECONDS - since)) -ge "$limit" ]; then
      echo "bench: waiting for $what: stuck at $n of $target for $limit s" >&2
      exit 1
    fi
    sleep "$interval"
  done
}

# wait_accepted TARGET [INTERVAL]: waits until the simulator has accepted TARGET notifications in all (polling every
# INTERVAL seconds, default 0.05); ends the script as wait_at_least says when that cannot happen.
wait_accepted() { wait_at_least "the simulator to accept $1 notifications in all" "$1" "${2:-0.05}" accepted; }

# measure VAR COMMAND…: runs COMMAND in this shell with its output to a file, then sets VAR to that output. Unlike
# VAR=$(COMMAND), a failure in COMMAND ends the script at once, and the processes COMMAND starts and adds to PIDS are
# in the list the script's EXIT trap stops.
measure() {
  local var=$1 out
  shift
  out=$(mktemp "${WORK:-${TMPDIR:-/tmp}}/measure.XXXXXX")
  "$@" > "$out"
  printf -v "$var" '%s' "$(< "$out")"
  rm -f "$out"
}

# median: the median of the numbers on standard input, one a line; for an even count, the mean of the two middle ones.
median() {
  sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.10g\n", (a[NR/2]+a[NR/2+1])/2}'
}

# token_auth_options PKI_DIR HOST:PORT TOPIC: HTTP/2 route, CA and provider key of a `herald sim pki` directory.
token_auth_options() {
  cat <<OPTIONS
  delivery_method = apn
  routes = ( "https://$2" )
  tls_verify = ca
  tls_ca = "$1/ca.pem"
  apn_key = "$(j "$1/pki.json" '["token_key"]["p8"]')"
  apn_key_id = "$(j "$1/pki.json" '["key_id"]')"
  apn_team_id = "$(j "$1/pki.json" '["team_id"]')"
  apn_topic = "$3"
OPTIONS
}

# sim_up [SIM ARGS…]: (re)starts `$HERALD sim` with the PKI in $WORK/pki, its addresses written to $WORK/addrs;
# sets SIM_PID and returns once the addresses are there.
sim_up() {
  kill $SIM_PID 2>/dev/null || true
  wait $SIM_PID 2>/dev/null || true
  rm -f "$WORK/addrs"
  "$HERALD" sim --pki "$WORK/pki" "$@" > "$WORK/addrs" 2> "$WORK/sim.log" &
  SIM_PID=$!
  for _ in $(seq 200); do [ -s "$WORK/addrs" ] && break; sleep 0.05; done
}

# cpu_ticks PID...: user + system CPU ticks of the processes so far (getconf CLK_TCK of them make a second).
cpu_ticks() {
  local total=0 p
  for p in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
