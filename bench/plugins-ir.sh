#!/bin/sh
# Instructions per request of bench/plugins.routes.lua's three routes: /plain,
# /hook (a no-op access hook) and /api (jwt-auth + rate-limit), counted by
# valgrind's callgrind in one worker (a busy machine does not change them, as
# it does bench/plugins.sh's CPU time). For each path: the worker's
# instructions over a run of WARM + N keep-alive GETs (one python client, one
# connection, upstream.py on 127.0.0.1) less those of a run of WARM (start and
# exit cancel out), divided by N. Env: N (2000), WARM (200), PATHS
# ("/plain /hook /api"), BIN (./moongate), KEEP=1 keeps the callgrind files.
set -eu
cd "$(dirname "$0")/.."
N=${N:-2000}; WARM=${WARM:-200}; PATHS=${PATHS:-/plain /hook /api}; BIN=${BIN:-./moongate}
work=$(mktemp -d /tmp/moongate-plugins-ir-XXXXXX)
up_pid=""; mg_pid=""
cleanup() {
  [ -n "$mg_pid" ] && kill "$mg_pid" 2>/dev/null || true
  [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM
/usr/bin/python3 spec/fixtures/upstream.py --port 0 --pidfile "$work/up.pid" >"$work/up.out" 2>&1 &
up_pid=$!
i=0
while ! grep -q '^PORT ' "$work/up.out" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
up_port=$(sed -n 's/^PORT //p' "$work/up.out")
[ -n "$up_port" ] || { echo "plugins-ir: upstream.py did not start" >&2; exit 1; }

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
hdr=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
pay=$(printf '{"sub":"bench","exp":4102444800}' | b64url)
sig=$(printf '%s.%s' "$hdr" "$pay" | openssl dgst -sha256 -hmac bench-secret -binary | b64url)
TOKEN="$hdr.$pay.$sig"

cat >"$work/client.py" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
h = {"User-Agent": "plugins-ir/1"}
if sys.argv[4]:
    h["Authorization"] = "Bearer " + sys.argv[4]
bad = 0
for i in range(int(sys.argv[3])):
    c.request("GET", sys.argv[2], headers=h)
    r = c.getresponse()
    r.read()
    bad += r.status != 200
sys.exit(1 if bad else 0)
PY

run() { # run PATH COUNT: the worker's instructions over its whole life
  port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/site/conf"
  cp bench/plugins.routes.lua "$work/site/conf/plugins.routes.lua"
  cat >"$work/site/conf/moongate.lua" <<CONF
return {
  listen = "127.0.0.1:$port",
  workers = 1,
  routes = "conf/plugins.routes.lua",
  access_log = false,
  log_level = "warn",
  shared_dicts = { rate_limit = 4194304 },
  upstreams = { runtime = { servers = { "http://127.0.0.1:$up_port" }, keepalive = 16 } },
}
CONF
  cg="$work/cg.$(echo "$1" | tr -d /).$2"
  (cd "$work/site" && exec valgrind -q --tool=callgrind --callgrind-out-file="$cg.%p" \
     "$OLDPWD/$BIN" -c conf/moongate.lua) >"$work/mg.log" 2>&1 &
  mg_pid=$!
  i=0
  until [ -n "$(ss -Hltn "sport = :$port")" ] && pgrep -P "$mg_pid" >/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "plugins-ir: did not start" >&2; cat "$work/mg.log" >&2; exit 1; }
    sleep 0.2
  done
  worker=$(pgrep -P "$mg_pid" | head -n 1)
  tok=""; [ "$1" = /api ] && tok=$TOKEN
  /usr/bin/python3 "$work/client.py" "$port" "$1" "$2" "$tok" || { echo "plugins-ir: non-200 answers on $1" >&2; exit 1; }
  kill "$mg_pid"; wait "$mg_pid" 2>/dev/null || true; mg_pid=""
  sed -n 's/^summary: *//p' "$cg.$worker" | head -n 1
}

for p in $PATHS; do
  a=$(run "$p" "$WARM"); b=$(run "$p" $((WARM + N)))
  echo "$p $a $b" | awk -v n="$N" '{ printf "%-7s %.0f instructions per request\n", $1, ($3 - $2) / n }'
done
