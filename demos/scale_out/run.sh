#!/usr/bin/env bash
# Plays demos/scale_out/README.md's three machines on this one: a broker, two
# workers, a host. Checks the output against the in-process run, then kills a
# worker (SIGKILL) mid-run and checks that nothing was lost or duplicated.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
plumber="$(realpath "${1:-$here/../../build/dev/plumber}")"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
broker="redis://127.0.0.1:$port"
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save "" --appendonly yes \
  --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
echo "A: broker $broker"

# The demo's graph with this broker; and the same graph in process, for the check.
python3 - "$here/graph.json" "$work" "$broker" <<'PY'
import json, sys
graph = json.load(open(sys.argv[1]))
graph["settings"]["broker"] = sys.argv[3]
json.dump(graph, open(sys.argv[2] + "/remote.json", "w"))
del graph["nodes"][1]["remote"]
json.dump(graph, open(sys.argv[2] + "/local.json", "w"))
PY

"$plumber" worker "$work/remote.json" --node sq >"$work/b.log" 2>&1 &
pids+=($!); worker_b=$!
"$plumber" worker "$work/remote.json" --node sq --procs 2 >"$work/c.log" 2>&1 &
pids+=($!)
echo "B, C: workers (pid $worker_b; pid $! with 2 worker processes)"

"$plumber" run "$work/local.json" | sort >"$work/expected"
echo "H: plumber run (remote)"
"$plumber" run "$work/remote.json" --stats 2>"$work/stats" | sort >"$work/got"
grep -A1 '^remote' "$work/stats"
cmp "$work/expected" "$work/got" && echo "same output as in process ($(wc -l <"$work/got") lines)"

echo "H: again, killing worker B (SIGKILL) mid-run"
"$plumber" run "$work/remote.json" >"$work/got2" &
host=$!
sleep 0.3
kill -9 "$worker_b" 2>/dev/null || true
wait "$host"
sort -o "$work/got2" "$work/got2"
cmp "$work/expected" "$work/got2" && echo "nothing lost, nothing duplicated ($(wc -l <"$work/got2") lines)"
