# bench/ir_common.sh: what the callgrind benches (metrics-ir.sh,
# plugins-ir.sh, seed-ir.sh) do alike, sourced after `set -eu` and `cd` to
# the project root. Each counts one worker's instructions over its whole
# life (start, COUNT requests by bench/ir_client.py, exit) under valgrind's
# callgrind; a run of WARM + N less a run of WARM, divided by N, is the
# figure (start and exit cancel out).
#   ir_init NAME       $work (a temporary folder, removed at exit unless
#                      KEEP=1), an exit trap that ends what was started, and
#                      spec/fixtures/upstream.py on 127.0.0.1: $up_port
#   ir_free_port       prints a free port on 127.0.0.1
#   ir_run DIR PORT CG COUNT PATH [HEADER ...] -- CMD ...
#                      runs CMD (moongate, its conf listening on PORT) in DIR
#                      under callgrind, waits for its worker, sends COUNT
#                      GETs of PATH, stops it and prints the worker's total
#                      instructions (from CG.<worker pid>); IR_VG_OPTS: more
#                      callgrind options
ir_init() {
  ir_name=$1
  work=$(mktemp -d "/tmp/moongate-$1-XXXXXX")
  up_pid=""; mg_pid=""
  trap ir_cleanup EXIT INT TERM
  /usr/bin/python3 spec/fixtures/upstream.py --port 0 >"$work/up.out" 2>&1 &
  up_pid=$!
  i=0
  while ! grep -q '^PORT ' "$work/up.out" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  up_port=$(sed -n 's/^PORT //p' "$work/up.out")
  [ -n "$up_port" ] || { echo "$ir_name: upstream.py did not start" >&2; exit 1; }
}

ir_cleanup() {
  [ -n "$mg_pid" ] && kill "$mg_pid" 2>/dev/null || true
  [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept: $work"; else rm -rf "$work"; fi
}

ir_free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ir_run() {
  ir_dir=$1; ir_port=$2; ir_cg=$3; ir_count=$4; ir_path=$5
  shift 5
  ir_hdrs=""
  while [ "$1" != -- ]; do
    ir_hdrs="$ir_hdrs$1
"
    shift
  done
  shift
  (cd "$ir_dir" && exec valgrind -q --tool=callgrind --callgrind-out-file="$ir_cg.%p" ${IR_VG_OPTS:-} "$@") \
    >"$work/mg.log" 2>&1 &
  mg_pid=$!
  i=0
  # the master listens before it forks: wait for the worker too
  until [ -n "$(ss -Hltn "sport = :$ir_port")" ] && pgrep -P "$mg_pid" >/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "$ir_name: moongate did not start" >&2; cat "$work/mg.log" >&2; exit 1; }
    sleep 0.2
  done
  ir_worker=$(pgrep -P "$mg_pid" | head -n 1)
  # the headers, one per line, as arguments
  printf '%s' "$ir_hdrs" | tr '\n' '\0' | xargs -0 /usr/bin/python3 bench/ir_client.py \
    "$ir_port" "$ir_path" "$ir_count" || { echo "$ir_name: non-200 answers on $ir_path" >&2; exit 1; }
  kill "$mg_pid"; wait "$mg_pid" 2>/dev/null || true; mg_pid=""
  sed -n 's/^summary: *//p' "$ir_cg.$ir_worker" | head -n 1
}
