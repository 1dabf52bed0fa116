#!/bin/sh
# bench/routes.sh: the router at scale (issue 14). Two moongates, 2 workers
# each, proxy routes to the harness's upstream (nginx on 19001): one with a
# table of 10 routes (:19095), one with 10 000 (:19096); in both the route
# requests match is declared last and is last in match order (priority 0).
# Prints each wrk run (round-robin, REPS x DURATION s), the medians and the
# requests/s ratio (goal >= 0.95); the reload time of the 10 000 routes,
# SIGHUP to every worker serving (from the log's timestamps: the master's
# "SIGHUP received", each worker's "generation N active"; goal < 100 ms),
# RELOADS times, then once more under wrk load (non2xx must be 0); and the
# memory per route: RSS of master + workers, difference / 9 990.
# Env: DURATION (5), REPS (3), CONNS (64), RELOADS (5), N (10000); REPS=0
# and LOAD=0 leave out the wrk runs (a check of the script itself);
# KEEP_LOG=FILE keeps the 10 000-route moongate's log there.
set -eu
cd "$(dirname "$0")/.."
BENCH=${BENCH:-../shared/bench}
DURATION=${DURATION:-5}; REPS=${REPS:-3}; CONNS=${CONNS:-64}; RELOADS=${RELOADS:-5}
N=${N:-10000}
[ -x "$BENCH/start_peers.sh" ] || { echo "bench: $BENCH/start_peers.sh not found" >&2; exit 1; }
for p in nginx wrk; do
  dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
done
work=$(mktemp -d /tmp/moongate-bench-routes-XXXXXX)

# site DIR PORT COUNT: conf/moongate.lua and scripts/routes.lua of COUNT
# routes; the first COUNT - 1 mix literals, {params} and prefixes
site() {
  mkdir -p "$1/conf" "$1/scripts"
  cat >"$1/conf/moongate.lua" <<EOF
return {
  listen = "127.0.0.1:$2",
  workers = 2,
  access_log = false,
  log_level = "debug", -- the workers' "generation N active" lines
  upstreams = { runtime = { servers = { "http://127.0.0.1:19001" }, keepalive = 128 } },
}
EOF
  awk -v n="$3" 'BEGIN {
    print "return {"
    for (i = 1; i < n; i++) {
      if (i % 3 == 0) printf "  { prefix = \"/svc%d/static\", upstream = \"runtime\" },\n", i
      else if (i % 3 == 1) printf "  { path = \"/svc%d/items/{id}\", upstream = \"runtime\" },\n", i
      else printf "  { path = \"/svc%d/{org}/repos/{repo}\", upstream = \"runtime\", method = \"GET\" },\n", i
    }
    print "  { path = \"/last/{id}/status\", upstream = \"runtime\", priority = 0 },"
    print "}"
  }' >"$1/scripts/routes.lua"
}

site "$work/small" 19095 10
site "$work/big" 19096 "$N"
ONLY="upstream" "$BENCH/start_peers.sh" >/dev/null
# each in a session of its own, as the peers (see run.sh)
setsid -f ./moongate -c "$work/small/conf/moongate.lua" -p "$work/small.pid" 2>"$work/small.log"
setsid -f ./moongate -c "$work/big/conf/moongate.lua" -p "$work/big.pid" 2>"$work/big.log"
cleanup() {
  for f in "$work/small.pid" "$work/big.pid"; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  "$BENCH/stop_peers.sh" >/dev/null
  [ -z "${KEEP_LOG:-}" ] || cp "$work/big.log" "$KEEP_LOG" # the big table's log, to read
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
up() { # up PORT: the last route answers
  i=0
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/last/1/status")" = 200 ]; do
    i=$((i + 1)); [ $i -lt 600 ] || { echo "bench: :$1 did not start" >&2; exit 1; }
    sleep 0.1
  done
}
up 19095; up 19096
small=$(cat "$work/small.pid"); big=$(cat "$work/big.pid")
[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:19096/svc9/nope)" = 404 ] ||
  { echo "bench: the big table does not route" >&2; exit 1; }

run() { # run PORT PID
  BENCH_PATH=/last/123/status BENCH_AUTH="" CPU_PIDS=$2 WARMUP_S=${3:-0} \
    "$BENCH/http.sh" "$1" "$DURATION" "$CONNS"
}
out=$work/runs
: >"$out"
if [ "$REPS" -gt 0 ]; then
  run 19095 "$small" 1 >/dev/null
  run 19096 "$big" 1 >/dev/null
fi
for r in $(seq 1 "$REPS"); do
  for t in routes10 routes$N; do
    case $t in
      routes10) l=$(run 19095 "$small") ;;
      *) l=$(run 19096 "$big") ;;
    esac
    echo "$t run$r: $l"; echo "$t $l" >>"$out"
  done
done
awk -v big="routes$N" '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[$1, kv[1], ++n[$1, kv[1]]] = kv[2] } names[$1] = 1 }
  function med(t, k,   c, i, j, a, x) { c = n[t, k]; for (i = 1; i <= c; i++) a[i] = v[t, k, i] + 0
    for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
    return c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2 }
  END { for (t in names) printf "%-12s median rps=%.0f p99_ms=%s cpu_us=%s non2xx=%s\n", t, med(t, "rps"), med(t, "p99_ms"), med(t, "srv_cpu_us_per_op"), med(t, "non2xx")
    if (n["routes10", "rps"]) printf "rps %s/routes10=%.3f (goal >= 0.95)\n", big, med(big, "rps") / med("routes10", "rps") }' "$out"

# memory: VmRSS of a master and its workers, KiB
rss() {
  for p in $1 $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    awk '/^VmRSS:/ { print $2 }' /proc/"$p"/status 2>/dev/null
  done | awk '{ t += $1 } END { print t + 0 }'
}
rs=$(rss "$small"); rb=$(rss "$big")
echo "rss_kib routes10=$rs routes$N=$rb (master + 2 workers)" \
  "bytes_per_route=$(( (rb - rs) * 1024 / (N - 10) )) ($(( (rb - rs) * 1024 / (N - 10) / 3 )) per process)"

# reload: SIGHUP to the last worker's "generation G active", from the log
stamp() { # HH:MM:SS.mmm of a log line -> seconds of the day
  sed -E 's/^[0-9-]+T([0-9]+):([0-9]+):([0-9]+)\.([0-9]+)Z.*/\1 \2 \3 \4/' |
    awk '{ printf "%.3f\n", $1 * 3600 + $2 * 60 + $3 + $4 / 1000 }'
}
reload() { # prints the milliseconds of one reload of the big table
  from=$(wc -c <"$work/big.log")
  kill -HUP "$big"
  i=0
  while :; do
    tail -c +"$((from + 1))" "$work/big.log" >"$work/tail"
    g=$(grep -m1 -oE 'worker [0-9]+: generation [0-9]+ active' "$work/tail" | awk '{ print $4 }')
    if [ -n "$g" ] && [ "$(grep -cE "worker [0-9]+: generation $g active" "$work/tail")" -ge 2 ]; then
      break
    fi
    i=$((i + 1)); [ $i -lt 1200 ] || { echo "bench: reload did not finish" >&2; exit 1; }
    sleep 0.05
  done
  t0=$(grep -m1 'reload: SIGHUP received' "$work/tail" | stamp)
  t1=$(grep -E "worker [0-9]+: generation $g active" "$work/tail" | tail -n 1 | stamp)
  # wait for the master to finish the reload before the next one
  i=0
  until grep -q "generation $g serving on" "$work/tail"; do
    i=$((i + 1)); [ $i -lt 1200 ] || break
    sleep 0.05; tail -c +"$((from + 1))" "$work/big.log" >"$work/tail"
  done
  echo "$t0 $t1" | awk '{ d = $2 - $1; if (d < 0) d += 86400; printf "%.0f\n", d * 1000 }'
}
ms=""
for r in $(seq 1 "$RELOADS"); do ms="$ms $(reload)"; done
echo "$ms" | awk -v t="routes$N" '{ n = NF; for (i = 1; i <= n; i++) a[i] = $i
  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
  printf "reload_ms %s:%s median=%s (goal < 100)\n", t, $0, n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }'
# once more under load: no request may fail
[ "${LOAD:-1}" = 0 ] && exit 0
BENCH_PATH=/last/123/status BENCH_AUTH="" "$BENCH/http.sh" 19096 "$DURATION" "$CONNS" >"$work/load" &
wrk_pid=$!
sleep 1
under=$(reload)
wait "$wrk_pid"
echo "reload under load: ${under} ms; wrk: $(cat "$work/load")"
