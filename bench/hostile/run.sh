#!/usr/bin/env bash
# Replays the worst inputs seen against herald's doors and reports peak memory and responsiveness: a 1,000,000-token
# REST request (refused by max_request_size, and on a listener without a size limit by
# max_notifications_per_request), an MCMT message of 200 recipients x 5,000 push parts (refused by
# max_notifications_per_message), a connection flood, slowloris clients, then 1,000,000 notifications queued through
# REST behind an unreachable APNs (the memory of a full resident queue). Throughout, a probe from another address asks
# the console `version` and GET /healthz every 250 ms with a 1 s deadline.
#
# Usage: bench/hostile/run.sh [QUEUED] [FLOOD]   (defaults 1000000 and 20000)
# Needs python3. Builds herald in release mode once. Prints a Markdown summary; exits non-zero when herald stopped
# answering within 1 s or peak RSS went over 1 GiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
QUEUED=${1:-1000000}
FLOOD=${2:-20000}
cargo build --release -p herald >&2
HERALD=$PWD/target/release/herald
WORK=$(mktemp -d)
HERALD_PID=
trap '[ -n "$HERALD_PID" ] && kill "$HERALD_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
. "$PWD/bench/lib.sh"

"$HERALD" sim pki "$WORK/pki" --topic com.example.hostile >/dev/null
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# Nothing listens there: every notification stays queued, in memory, waiting for its retry.
APNS_PORT=$(free_port)
PASSWORD=hostile-bench
cat > "$WORK/herald.conf" <<CONF
spool_dir = "$WORK/spool"
http_listener {
  listen "127.0.0.1:0" { }
  listen "127.0.0.3:0" { max_request_size = 0 }
}
esmtp_listener { listen "127.0.0.1:0" { mcmt_reception = allow } }
control_listener { listen "127.0.0.1:0" { control_password = "$PASSWORD" } }
domain "hostile.example" {
$(token_auth_options "$WORK/pki" "127.0.0.1:$APNS_PORT" com.example.hostile)
  retry_interval = 3600
  max_retry_interval = 3600
}
CONF
"$HERALD" serve -c "$WORK/herald.conf" > "$WORK/herald.addrs" 2> "$WORK/herald.log" &
HERALD_PID=$!
for _ in $(seq 600); do [ -s "$WORK/herald.addrs" ] && break; sleep 0.05; done
python3 "$PWD/bench/hostile/hostile.py" \
  --pid "$HERALD_PID" --addrs "$WORK/herald.addrs" --password "$PASSWORD" --domain hostile.example \
  --queued "$QUEUED" --flood "$FLOOD"
