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
. bench/ir_common.sh
ir_init seed-ir
cp "$BIN" "$work/moongate"
cp -r conf scripts lib plugins public "$work/"
sed -i 's/access_log = true/access_log = false/' "$work/conf/moongate.lua"
# run COUNT: the worker's instructions over its whole life
run() {
  port=$(ir_free_port); dport=$(ir_free_port)
  export MOONGATE_LISTEN=127.0.0.1:$port MOONGATE_WORKERS=1 \
    MOONGATE_UPSTREAM_RUNTIME=http://127.0.0.1:$up_port MOONGATE_SERVER_DEMO_RUNTIME_LISTEN=127.0.0.1:$dport
  ir_run "$work" "$port" "$work/seed.$1.cg" "$1" "/api/execution/123/status?tenant_id=t1" \
    "Authorization: Bearer demo-token" "User-Agent: seed-ir/1" -- ./moongate -c conf/moongate.lua
}
a=$(run "$WARM")
b=$(run $((WARM + N)))
echo "$a $b" | awk -v n="$N" '{ printf "seed route: %.0f instructions per request (callgrind, 1 worker)\n", ($2 - $1) / n }'
