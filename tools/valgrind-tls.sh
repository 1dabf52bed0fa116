#!/bin/sh
# make valgrind-tls: moongate under valgrind memcheck (--leak-check=full,
# master and worker followed across the fork) over a short TLS + WSS
# session: HTTPS requests (Lua handler, the C proxy to an upstream, keep-alive
# and new connections, with HSTS and OCSP stapling on), a wss:// echo
# session (python3-websockets), a bad ClientHello, a SIGHUP reload (the
# old generation's TLS contexts are freed), then SIGTERM. Prints each
# process's leak and error summary and exits non-zero unless every process
# has "definitely lost: 0 bytes" and no memcheck error. Bounded: every
# client has a timeout, the whole run takes about a minute. The certificate
# is made here (test only). Env: MOONGATE_BIN (./moongate).
set -eu
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${MOONGATE_BIN:-$ROOT/moongate}
PY=/usr/bin/python3
command -v valgrind >/dev/null || { echo "valgrind-tls: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
D=$ROOT/spec/out/valgrind-tls-$$
mkdir -p "$D/conf" "$D/scripts"
port() { $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(port); TLSPORT=$(port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj '/CN=localhost' -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -addext basicConstraints=critical,CA:TRUE -set_serial 0x4242 \
  -keyout "$D/key.pem" -out "$D/cert.pem" 2>/dev/null
# an OCSP response about the certificate, signed by itself (test only)
printf 'V\t301231000000Z\t\t4242\tunknown\t/CN=localhost\n' >"$D/index.txt"
openssl ocsp -issuer "$D/cert.pem" -cert "$D/cert.pem" -no_nonce -reqout "$D/req.der" >/dev/null 2>&1
openssl ocsp -index "$D/index.txt" -rsigner "$D/cert.pem" -rkey "$D/key.pem" -CA "$D/cert.pem" \
  -reqin "$D/req.der" -respout "$D/ocsp.der" -ndays 1 >/dev/null 2>&1
$PY spec/fixtures/upstream.py --port 0 --pidfile "$D/up.pid" >"$D/up.log" 2>&1 </dev/null &
i=0
while ! grep -q '^PORT' "$D/up.log" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
UPPORT=$(sed -n 's/^PORT \([0-9]*\).*/\1/p' "$D/up.log")
cat >"$D/conf/moongate.lua" <<EOF
return {
  listen = "127.0.0.1:$PORT",
  workers = 1,
  log_level = "info",
  tls = {
    listen = "127.0.0.1:$TLSPORT",
    certificates = { { cert = "$D/cert.pem", key = "$D/key.pem", ocsp = "$D/ocsp.der" } },
    hsts = "max-age=60",
  },
  upstreams = { up = { servers = { "http://127.0.0.1:$UPPORT" } } },
}
EOF
cat >"$D/scripts/routes.lua" <<'EOF'
return {
  { path = "/hello", handler = function() return 200, "hello\n" end },
  { prefix = "/up", upstream = "up" },
  { path = "/ws", websocket = { mode = "handler" }, handler = function(ws)
      while true do
        local data, kind = ws:recv()
        if not data then return end
        ws:send(data, kind)
      end
  end },
}
EOF
valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite \
  --trace-children=yes --child-silent-after-fork=no --num-callers=30 --log-file="$D/vg.%p" \
  "$BIN" -c "$D/conf/moongate.lua" -p "$D/moongate.pid" >"$D/moongate.log" 2>&1 &
vgpid=$!
cleanup() {
  kill "$vgpid" 2>/dev/null || true
  [ -s "$D/up.pid" ] && kill "$(cat "$D/up.pid")" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
i=0
until curl -fsS --max-time 5 --cacert "$D/cert.pem" --resolve "localhost:$TLSPORT:127.0.0.1" \
  "https://localhost:$TLSPORT/hello" >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 120 ] || { echo "valgrind-tls: moongate did not come up" >&2; cat "$D/moongate.log" >&2; exit 1; }
  sleep 0.5
done
C="curl -fsS --max-time 20 --cacert $D/cert.pem --resolve localhost:$TLSPORT:127.0.0.1"
u="https://localhost:$TLSPORT"
# keep-alive: several requests on one connection, then new connections
$C "$u/hello" "$u/up/a" "$u/hello" "$u/up/b?x=1" >/dev/null
for _ in 1 2 3; do $C -d 'some body' "$u/up/post" >/dev/null; done
$C -o /dev/null -D - "$u/hello" | grep -qi '^strict-transport-security: max-age=60' ||
  { echo "valgrind-tls: no HSTS" >&2; exit 1; }
echo | timeout 20 openssl s_client -connect "127.0.0.1:$TLSPORT" -servername localhost -status 2>&1 |
  grep -q 'OCSP Response Status: successful' || { echo "valgrind-tls: no OCSP staple" >&2; exit 1; }
# plain HTTP on the same process
curl -fsS --max-time 20 "http://127.0.0.1:$PORT/hello" >/dev/null
# wss://: an echo session, text and binary, then a clean close
timeout 60 $PY - "$TLSPORT" "$D/cert.pem" <<'EOF'
import asyncio, ssl, sys, websockets
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    async with websockets.connect(f"wss://localhost:{sys.argv[1]}/ws", ssl=ctx, host="127.0.0.1",
                                  port=int(sys.argv[1]), server_hostname="localhost",
                                  open_timeout=30, close_timeout=10) as ws:
        for i in range(20):
            await ws.send(f"message {i} " + "x" * (i * 500))
            got = await asyncio.wait_for(ws.recv(), 20)
            assert got.startswith(f"message {i} "), got
        await ws.send(bytes(range(256)))
        assert await asyncio.wait_for(ws.recv(), 20) == bytes(range(256))
asyncio.run(main())
EOF
# a ClientHello that is garbage: closed, counted, nothing leaks
printf '\026\003\001\000\005garbage-not-a-hello' | timeout 20 $PY -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=15)
s.sendall(sys.stdin.buffer.read())
try:
    while s.recv(4096):
        pass
except OSError:
    pass' "$TLSPORT"
# a reload: the old generation (and its SSL_CTX) goes once idle
mpid=$(cat "$D/moongate.pid")
kill -HUP "$mpid"
i=0
until grep -q 'generation 2 serving' "$D/moongate.log"; do
  i=$((i + 1)); [ $i -lt 120 ] || { echo "valgrind-tls: the reload did not finish" >&2; exit 1; }
  sleep 0.5
done
$C "$u/hello" "$u/up/after-reload" >/dev/null
kill -TERM "$mpid"
i=0
while kill -0 "$vgpid" 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 240 ] || { echo "valgrind-tls: moongate did not stop" >&2; exit 1; }
  sleep 0.5
done
bad=0
for f in "$D"/vg.*; do
  who=$(grep -m1 -o 'Command: .*' "$f" || true)
  lost=$(grep -o 'definitely lost: [0-9,]* bytes in [0-9,]* blocks' "$f" || echo 'definitely lost: 0 bytes in 0 blocks (no leaks are possible)')
  errs=$(grep -o 'ERROR SUMMARY: [0-9,]* errors' "$f" | tail -n 1)
  echo "valgrind-tls: pid ${f##*.}: $lost; $errs ($who)"
  echo "$lost" | grep -q 'definitely lost: 0 bytes' || bad=1
  echo "$errs" | grep -q 'ERROR SUMMARY: 0 errors' || bad=1
done
[ $bad -eq 0 ] && echo "valgrind-tls: clean (logs in $D)" || echo "valgrind-tls: NOT clean, see $D/vg.*"
exit $bad
