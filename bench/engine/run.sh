#!/usr/bin/env bash
# Benchmark of herald's delivery engine against the APNs simulator, with h2load against the same simulator as
# the reference measured in the same run (same connection count, stream limit, payload and provider-token auth).
#
# Usage: bench/engine/run.sh [RUNS] [REQUESTS]   (defaults 5 and 200000)
# Needs: h2load (apt-get install -y nghttp2-client), openssl, python3. Builds herald in release mode once.
# Prints Markdown tables (also written to target/bench-engine.md).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${1:-5}
N=${2:-200000}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
cargo build --release -p herald >&2
HERALD=$PWD/target/release/herald
WORK=$(mktemp -d)
SIM_PID=
trap 'kill $SIM_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$HERALD" sim pki "$WORK/pki" --topic com.example.bench >/dev/null
. "$PWD/bench/lib.sh"
KEY_ID=$(j "$WORK/pki/pki.json" '["key_id"]')
TEAM_ID=$(j "$WORK/pki/pki.json" '["team_id"]')
P8=$(j "$WORK/pki/pki.json" '["token_key"]["p8"]')
CERT=$(j "$WORK/pki/pki.json" '["clients"]["com.example.bench"]["universal"]["cert"]')
KEY=$(j "$WORK/pki/pki.json" '["clients"]["com.example.bench"]["universal"]["key"]')

start_sim() {
  sim_up "$@"
  H2=$(j "$WORK/addrs" '["h2"]')
  BIN=$(j "$WORK/addrs" '["binary"]')
}

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
HDR=$(printf '{"alg":"ES256","kid":"%s"}' "$KEY_ID" | b64url)
CLM=$(printf '{"iss":"%s","iat":%s}' "$TEAM_ID" "$(date +%s)" | b64url)
SIG=$(printf '%s.%s' "$HDR" "$CLM" | openssl dgst -sha256 -sign "$P8" | b64url)
JWT="$HDR.$CLM.$SIG"
# The same 128-byte payload herald bench generates.
python3 -c 'h="{\"aps\":{\"alert\":\"herald bench\"},\"pad\":\""; t="\"}"; print(h+"x"*(128-len(h)-len(t))+t, end="")' > "$WORK/payload.json"
TOKEN=$(printf 'ab%.0s' $(seq 32))

write_conf() { # conns
  cat > "$WORK/bench.conf" <<CONF
domain "h2.bench" {
  delivery_method = apn
  routes = ( "https://$H2" )
  tls_verify = ca
  tls_ca = "$WORK/pki/ca.pem"
  apn_key = "$P8"
  apn_key_id = "$KEY_ID"
  apn_team_id = "$TEAM_ID"
  apn_topic = "com.example.bench"
  max_outbound_connections = $1
}
domain "binary.bench" {
  delivery_method = apn
  routes = ( "apn://127.0.0.1?port=${BIN##*:}" )
  tls_verify = ca
  tls_ca = "$WORK/pki/ca.pem"
  tls_certificate = "$CERT"
  tls_key = "$KEY"
  delivery_response_timeout = 200
  max_outbound_connections = $1
}
CONF
}

OUT=target/bench-engine.md
echo "| connections | h2load notifications/s | herald notifications/s | herald / h2load |" > "$OUT"
echo "|---|---|---|---|" >> "$OUT"
start_sim
for conns in 1 4; do
  write_conf "$conns"
  ref=() her=()
  for _ in $(seq "$RUNS"); do
    out=$(h2load -n "$N" -c "$conns" -m 1000 -t 1 -d "$WORK/payload.json" -H "apns-topic: com.example.bench" \
      -H "apns-push-type: alert" -H "authorization: bearer $JWT" "https://$H2/3/device/$TOKEN")
    grep -q "status codes: $N 2xx" <<<"$out" || { echo "h2load failed: $out" >&2; exit 1; }
    ref+=("$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")")
    her+=("$("$HERALD" bench -c "$WORK/bench.conf" --domain h2.bench -n "$N" --json | j /dev/stdin '["per_second"]')")
  done
  r=$(printf '%s\n' "${ref[@]}" | median); h=$(printf '%s\n' "${her[@]}" | median)
  printf '| %s | %.0f | %.0f | %.2f |\n' "$conns" "$r" "$h" "$(awk -v a="$h" -v b="$r" 'BEGIN{print a/b}')" | tee -a "$OUT"
done

# APNs' real round trip: the simulator answers each request after 30 ms. No client can do better than
# connections × the server's stream limit (1000) / 0.030 s; herald is compared with that bound and with h2load
# against the same simulator in the same run (whose answers also take the simulator's own time on top of the 30 ms).
start_sim --latency-ms 30
echo >> "$OUT"
echo "| connections, 30 ms round trip | bound: streams / round trip | h2load notifications/s | herald notifications/s | herald / bound | herald / h2load | herald at full limits / bound |" >> "$OUT"
echo "|---|---|---|---|---|---|---|" >> "$OUT"
for conns in 1 4; do
  write_conf "$conns"
  ref=() lat=() full=()
  for _ in $(seq "$RUNS"); do
    out=$(h2load -n "$N" -c "$conns" -m 1000 -t 1 -d "$WORK/payload.json" -H "apns-topic: com.example.bench" \
      -H "apns-push-type: alert" -H "authorization: bearer $JWT" "https://$H2/3/device/$TOKEN")
    grep -q "status codes: $N 2xx" <<<"$out" || { echo "h2load failed: $out" >&2; exit 1; }
    ref+=("$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")")
    res=$("$HERALD" bench -c "$WORK/bench.conf" --domain h2.bench -n "$N" --json)
    lat+=("$(j /dev/stdin '["per_second"]' <<<"$res")")
    full+=("$(j /dev/stdin '["at_full_limit_per_second"] or 0' <<<"$res")")
  done
  bound=$(( conns * 1000 * 1000 / 30 ))
  r=$(printf '%s\n' "${ref[@]}" | median); h=$(printf '%s\n' "${lat[@]}" | median)
  f=$(printf '%s\n' "${full[@]}" | median)
  printf '| %s | %s | %.0f | %.0f | %.2f | %.2f | %.2f |\n' "$conns" "$bound" "$r" "$h" \
    "$(awk -v a="$h" -v b="$bound" 'BEGIN{print a/b}')" "$(awk -v a="$h" -v b="$r" 'BEGIN{print a/b}')" \
    "$(awk -v a="$f" -v b="$bound" 'BEGIN{print a/b}')" | tee -a "$OUT"
done
start_sim

echo >> "$OUT"
echo "| binary connections | herald notifications/s (median of $RUNS, 1M notifications) |" >> "$OUT"
echo "|---|---|" >> "$OUT"
for conns in 1 2; do
  write_conf "$conns"
  bin=()
  for _ in $(seq "$RUNS"); do
    bin+=("$("$HERALD" bench -c "$WORK/bench.conf" --domain binary.bench -n 1000000 --json | j /dev/stdin '["per_second"]')")
  done
  printf '| %s | %.0f |\n' "$conns" "$(printf '%s\n' "${bin[@]}" | median)" | tee -a "$OUT"
done

# Memory: 1M notifications (distinct payload buffers) queued behind a simulator that never answers.
start_sim --latency-ms 3600000
write_conf 4
# Once as the benchmark builds them, once with the fields `herald serve` gives a REST push (--serve-fields).
for fields in "" --serve-fields; do
  mem=$("$HERALD" bench -c "$WORK/bench.conf" --domain h2.bench -n 1000000 --distinct-payloads $fields --timeout 20 --json || true)
  echo >> "$OUT"
  echo "Memory with 1,000,000 notifications ${fields:+($fields) }queued behind a stalled simulator: peak RSS $(( $(j /dev/stdin '["peak_rss_kib"]' <<<"$mem") / 1024 )) MiB ($mem)" | tee -a "$OUT"
done
