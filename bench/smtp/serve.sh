#!/usr/bin/env bash
# SMTP throughput against `herald serve` as deployed: postfix's smtp-source (Debian package postfix) sends MCMT
# messages, one push part and one recipient each, to the ESMTP listener; every message is acknowledged (250) only
# once its notification is fsync'd in the embedded spool; herald delivers to the APNs simulator (HTTP/2, token
# auth). Prints the rate at which smtp-source got its 250s and the rate until the simulator had every notification.
#
# Usage: bench/smtp/serve.sh [MESSAGES] [SESSIONS] [RUNS]   (defaults 50000, 32, 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
MESSAGES=${1:-50000}
SESSIONS=${2:-32}
RUNS=${3:-3}
command -v smtp-source >/dev/null || { echo "smtp-source not found: apt-get install postfix" >&2; exit 1; }
cargo build --release -p herald >&2
HERALD=$PWD/target/release/herald
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
. "$PWD/bench/lib.sh"

"$HERALD" sim pki "$WORK/pki" --topic com.example.smtp >/dev/null
"$HERALD" sim --pki "$WORK/pki" > "$WORK/sim.addrs" 2> "$WORK/sim.log" &
PIDS+=($!)
for _ in $(seq 200); do [ -s "$WORK/sim.addrs" ] && break; sleep 0.05; done
H2=$(j "$WORK/sim.addrs" '["h2"]')
ADMIN=$(j "$WORK/sim.addrs" '["admin"]')

# smtp-source adds CRLF to every line of the file itself.
cat > "$WORK/message.eml" <<'MSG'
From: app@backend.example
To: push@smtp.example
Subject: push
MIME-Version: 1.0
Content-Type: multipart/vnd.msys.mcmt; boundary="MCMT_BOUNDARY"

--MCMT_BOUNDARY
Content-Type: message/rfc822

Subject: the email

Not delivered by herald.
--MCMT_BOUNDARY
Content-Type: message/vnd.msys.apn

X-APNs-Topic: com.example.smtp

{"aps":{"alert":"smtp-source"}}
--MCMT_BOUNDARY--
MSG

acks=() ends=()
for run in $(seq "$RUNS"); do
  rm -rf "$WORK/spool"
  cat > "$WORK/herald.conf" <<CONF
spool_dir = "$WORK/spool"
esmtp_listener { listen "127.0.0.1:0" { mcmt_reception = allow } }
domain "smtp.example" {
$(token_auth_options "$WORK/pki" "$H2" com.example.smtp)
  max_outbound_connections = 2
}
CONF
  "$HERALD" serve -c "$WORK/herald.conf" > "$WORK/herald.addrs" 2> "$WORK/herald.log" &
  HERALD_PID=$!; PIDS+=("$HERALD_PID")
  for _ in $(seq 600); do [ -s "$WORK/herald.addrs" ] && break; sleep 0.05; done
  SMTP=$(j "$WORK/herald.addrs" '["esmtp"][0]')
  before=$(accepted)
  t0=$(date +%s.%N)
  smtp-source -d -s "$SESSIONS" -m "$MESSAGES" -f app@backend.example \
    -t "$(printf '%064x' $((0x5a7e0000 + run)))@smtp.example" -F "$WORK/message.eml" "$SMTP"
  t1=$(date +%s.%N)
  wait_accepted $((before + MESSAGES))
  t2=$(date +%s.%N)
  kill "$HERALD_PID"; wait "$HERALD_PID" 2>/dev/null || true
  acks+=("$(awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')")
  ends+=("$(awk -v n="$MESSAGES" -v a="$t0" -v b="$t2" 'BEGIN{printf "%.0f", n/(b-a)}')")
  echo "run $run: ${acks[-1]} msg/s acknowledged (durable), ${ends[-1]} msg/s delivered" >&2
done
echo "| $MESSAGES messages, $SESSIONS sessions | runs | median |"
echo "|---|---|---|"
echo "| acknowledged (250 after fsync) | ${acks[*]} | $(printf '%s\n' "${acks[@]}" | median) msg/s |"
echo "| delivered to the simulator | ${ends[*]} | $(printf '%s\n' "${ends[@]}" | median) msg/s |"
