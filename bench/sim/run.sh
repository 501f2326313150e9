#!/usr/bin/env bash
# Benchmark of the APNs simulator (herald sim) with h2load: notifications per second and simulator CPU time per
# notification, median of RUNS runs per setting, with and without provider-token auth.
#
# Usage: [HERALD=binary] bench/sim/run.sh [RUNS] [REQUESTS]   (defaults 5 and 200000)
# Needs: h2load (apt-get install -y nghttp2-client). Builds herald in release mode once.
# Prints a Markdown table (also written to target/bench-sim.md) plus the exact commands used.
set -euo pipefail
cd "$(dirname "$0")/../.."
. "$PWD/bench/lib.sh"

RUNS=${1:-5}
N=${2:-200000}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }

# HERALD=path/to/herald skips the build (e.g. to benchmark a binary built earlier).
if [ -z "${HERALD:-}" ]; then
  cargo build --release -p herald >&2
  HERALD=target/release/herald
fi
WORK=$(mktemp -d)
trap 'kill "$SIM_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$HERALD" sim pki "$WORK/pki" >/dev/null
KEY_ID=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["key_id"])' "$WORK/pki/pki.json")
TEAM_ID=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["team_id"])' "$WORK/pki/pki.json")
P8=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["token_key"]["p8"])' "$WORK/pki/pki.json")

# A provider token made with openssl alone (DER signature, as Apple's own example does; the simulator accepts both).
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
HDR=$(printf '{"alg":"ES256","kid":"%s"}' "$KEY_ID" | b64url)
CLM=$(printf '{"iss":"%s","iat":%s}' "$TEAM_ID" "$(date +%s)" | b64url)
SIG=$(printf '%s.%s' "$HDR" "$CLM" | openssl dgst -sha256 -sign "$P8" | b64url)
JWT="$HDR.$CLM.$SIG"

printf '{"aps":{"alert":{"title":"Benchmark","body":"Hello from h2load"},"badge":1}}' > "$WORK/payload.json"
TOKEN=$(printf 'ab%.0s' $(seq 32))
TOPIC=com.example.herald

# --auth none: requests without `authorization` are accepted (testing aid); requests with a token are verified.
SIM_CMD=("$HERALD" sim --pki "$WORK/pki" --auth none --max-streams 1000)
"${SIM_CMD[@]}" > "$WORK/addrs" 2> "$WORK/sim.log" &
SIM_PID=$!
for _ in $(seq 200); do [ -s "$WORK/addrs" ] && break; sleep 0.05; done
H2=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["h2"])' "$WORK/addrs")
TICKS=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14+$15}' "/proc/$SIM_PID/stat"; }

OUT=target/bench-sim.md
{
  echo "| auth | clients (-c) | streams/client (-m) | notifications/s (median of $RUNS) | sim CPU µs/notification (median) |"
  echo "|---|---|---|---|---|"
} > "$OUT"

run_setting() {
  local auth=$1 c=$2 m=$3
  local extra=()
  [ "$auth" = token ] && extra=(-H "authorization: bearer $JWT")
  local rates=() cpus=()
  for _ in $(seq "$RUNS"); do
    local before after out rps
    before=$(cpu_ticks)
    out=$(h2load -n "$N" -c "$c" -m "$m" -t 1 -d "$WORK/payload.json" -H "apns-topic: $TOPIC" "${extra[@]}" \
      "https://$H2/3/device/$TOKEN")
    after=$(cpu_ticks)
    if ! grep -q "status codes: $N 2xx" <<<"$out"; then
      echo "h2load: not all $N requests got 2xx:" >&2; echo "$out" >&2; exit 1
    fi
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
    rates+=("$rps")
    cpus+=("$(awk -v t=$((after - before)) -v hz="$TICKS" -v n="$N" 'BEGIN {printf "%.2f", t / hz / n * 1e6}')")
  done
  local r u
  r=$(printf '%s\n' "${rates[@]}" | median)
  u=$(printf '%s\n' "${cpus[@]}" | median)
  printf '| %s | %s | %s | %.0f | %s |\n' "$auth" "$c" "$m" "$r" "$u" | tee -a "$OUT"
}

for auth in none token; do
  for cm in "1 100" "4 100" "16 50" "64 10"; do
    # shellcheck disable=SC2086
    run_setting "$auth" $cm
  done
done

{
  echo
  echo "Simulator: \`${SIM_CMD[*]/#$WORK/\$WORK}\`"
  echo "h2load: \`h2load -n $N -c C -m M -t 1 -d payload.json -H 'apns-topic: $TOPIC' [-H 'authorization: bearer JWT'] https://H2/3/device/<64 hex>\`"
  echo "Payload: $(wc -c < "$WORK/payload.json") bytes. CPU = utime+stime of the simulator process from /proc/PID/stat."
} | tee -a "$OUT"
