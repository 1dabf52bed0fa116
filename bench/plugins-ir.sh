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
. bench/ir_common.sh
ir_init plugins-ir

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
hdr=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
pay=$(printf '{"sub":"bench","exp":4102444800}' | b64url)
sig=$(printf '%s.%s' "$hdr" "$pay" | openssl dgst -sha256 -hmac bench-secret -binary | b64url)
TOKEN="$hdr.$pay.$sig"

run() { # run PATH COUNT: the worker's instructions over its whole life
  # bench/plugins.conf.lua itself, with one worker, a free port and this upstream
  port=$(ir_free_port)
  export MOONGATE_LISTEN=127.0.0.1:$port MOONGATE_WORKERS=1 MOONGATE_UPSTREAM_RUNTIME=http://127.0.0.1:$up_port
  p=$1; n=$2
  set -- "User-Agent: plugins-ir/1"
  if [ "$p" = /api ]; then set -- "$@" "Authorization: Bearer $TOKEN"; fi
  ir_run "$PWD" "$port" "$work/cg.$(echo "$p" | tr -d /).$n" "$n" "$p" "$@" -- "$BIN" -c bench/plugins.conf.lua
}

for p in $PATHS; do
  a=$(run "$p" "$WARM"); b=$(run "$p" $((WARM + N)))
  echo "$p $a $b" | awk -v n="$N" '{ printf "%-7s %.0f instructions per request\n", $1, ($3 - $2) / n }'
done
