# Shell helpers the benchmark scripts source: JSON field reading, the simulator's accepted count, CPU ticks of processes,
# and the lines of a domain stanza that deliver to the simulator with a test PKI's provider key.

# j FILE EXPR: prints the JSON value at EXPR (a Python subscript such as '["admin"]') of FILE (/dev/stdin allowed).
j() { python3 -c 'import json,sys;d=json.load(open(sys.argv[1]));print(eval("d"+sys.argv[2]))' "$@"; }

# accepted: notifications the simulator whose admin address is $ADMIN has accepted.
accepted() { curl -s "http://$ADMIN/stats" | j /dev/stdin '["accepted"]["total"]'; }

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
