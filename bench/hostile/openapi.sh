#!/usr/bin/env bash
# Property-based requests against every route docs/openapi.yaml documents: schemathesis (from PyPI, installed in a
# scratch virtualenv) generates valid and invalid requests from the spec and checks the answers against it (no 5xx,
# status codes and bodies as documented, invalid requests refused, valid ones accepted). herald runs as
# `herald demo --linger` (simulator, three apps, the dashboard), so the routes have data behind them.
#
# Usage: bench/hostile/openapi.sh [MAX_EXAMPLES]   (default 40 per operation)
# Needs python3 with venv and pip, and PyPI. Builds herald in release mode once. Prints schemathesis's report; exits
# non-zero when it found a failure. Left out: the check that every schema-valid request is accepted, since herald's
# answer to many of them depends on the configuration the schema cannot see (the demo's apps cannot manage channels,
# a push may name an undeclared binding, an inject template may render to no message). One finding is expected, as
# of 2026-12-06: POST /api/v1/notifications/query with more than 1,000 ids is answered 413, as documented, where
# schemathesis wants a 400. Anything else, a 5xx above all, is a defect.
set -euo pipefail
cd "$(dirname "$0")/../.."
MAX_EXAMPLES=${1:-40}
cargo build --release -p herald >&2
HERALD=$PWD/target/release/herald
WORK=$(mktemp -d)
DEMO_PID=
trap '[ -n "$DEMO_PID" ] && kill "$DEMO_PID" 2>/dev/null; rm -rf "$WORK"' EXIT

python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q schemathesis >&2
"$HERALD" demo --count 200 --smtp-count 5 --dir "$WORK/demo" --linger 3600 > "$WORK/demo.log" 2>&1 &
DEMO_PID=$!
for _ in $(seq 600); do grep -q "run finished" "$WORK/demo.log" && break; sleep 0.1; done
grep -q "run finished" "$WORK/demo.log" || { cat "$WORK/demo.log" >&2; exit 1; }
URL=$(sed -n 's/.*herald listening on \(http:[^ ]*\) (REST).*/\1/p' "$WORK/demo.log")
KEY=$(sed -n 's/.*log in with the API key "\([^"]*\)".*/\1/p' "$WORK/demo.log")
# From the scratch directory: schemathesis keeps a cache of its findings in the working directory.
SPEC=$PWD/docs/openapi.yaml
cd "$WORK"
"$WORK/venv/bin/st" run "$SPEC" --url "$URL" -H "Authorization: Bearer $KEY" --checks all \
  --exclude-checks positive_data_acceptance --max-examples "$MAX_EXAMPLES" --workers 1
