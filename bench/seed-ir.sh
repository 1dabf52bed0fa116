#!/bin/sh
# The seed's status route counted in instructions (callgrind), which a busy
# machine does not change: the shipped conf (its auth hook, execution.status,
# moongate.proxy to Runtime) with 1 worker and the access log off, Runtime =
# spec/fixtures/upstream.py. The worker's instructions over a run of
# WARM + N keep-alive GET /api/execution/123/status?tenant_id=t1 (Bearer
# demo-token, one connection) less those over a run of WARM (start and
# exit cancel out), divided by N. Run to run it moves by 1-3 % (the JIT
# compiles at different points, request ids differ): compare medians.
# Usage: sh bench/seed-ir.sh [BIN=./moongate] [N=3000] [WARM=1000]; KEEP=1 keeps the files.
set -eu
cd "$(dirname "$0")/.."
BIN=$(cd "$(dirname "${1:-./moongate}")" && pwd)/$(basename "${1:-./moongate}")
N=${2:-3000}; WARM=${3:-1000}
work=$(mktemp -d /tmp/moongate-seed-ir-XXXXXX)
up_pid=""; mg_pid=""
cleanup() {
  [ -n "$mg_pid" ] && kill "$mg_pid" 2>/dev/null || true
  [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM
cp "$BIN" "$work/moongate"
cp -r conf scripts lib plugins public "$work/"
sed -i 's/access_log = true/access_log = false/' "$work/conf/moongate.lua"
/usr/bin/python3 spec/fixtures/upstream.py --port 0 >"$work/up.out" 2>&1 &
up_pid=$!
i=0
while ! grep -q '^PORT ' "$work/up.out" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
up_port=$(sed -n 's/^PORT //p' "$work/up.out")
[ -n "$up_port" ] || { echo "seed-ir: upstream.py did not start" >&2; exit 1; }
cat >"$work/client.py" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
bad = 0
for i in range(int(sys.argv[2])):
    c.request("GET", "/api/execution/123/status?tenant_id=t1",
              headers={"Authorization": "Bearer demo-token", "User-Agent": "seed-ir/1"})
    r = c.getresponse()
    r.read()
    bad += r.status != 200
sys.exit(1 if bad else 0)
PY
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# run COUNT: the worker's instructions over its whole life
run() {
  port=$(free_port); dport=$(free_port)
  cg="$work/seed.$1.cg"
  (cd "$work" && MOONGATE_LISTEN=127.0.0.1:$port MOONGATE_WORKERS=1 \
     MOONGATE_UPSTREAM_RUNTIME=http://127.0.0.1:$up_port MOONGATE_SERVER_DEMO_RUNTIME_LISTEN=127.0.0.1:$dport \
     exec valgrind -q --tool=callgrind --callgrind-out-file="$cg.%p" ./moongate -c conf/moongate.lua) \
    >"$work/mg.log" 2>&1 &
  mg_pid=$!
  i=0
  until [ -n "$(ss -Hltn "sport = :$port")" ] && pgrep -P "$mg_pid" >/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "seed-ir: moongate did not start" >&2; cat "$work/mg.log" >&2; exit 1; }
    sleep 0.2
  done
  worker=$(pgrep -P "$mg_pid" | head -n 1)
  /usr/bin/python3 "$work/client.py" "$port" "$1" || { echo "seed-ir: non-200 answers" >&2; exit 1; }
  kill "$mg_pid"; wait "$mg_pid" 2>/dev/null || true; mg_pid=""
  sed -n 's/^summary: *//p' "$cg.$worker" | head -n 1
}
a=$(run "$WARM")
b=$(run $((WARM + N)))
echo "$a $b" | awk -v n="$N" '{ printf "seed route: %.0f instructions per request (callgrind, 1 worker)\n", ($2 - $1) / n }'
