#!/usr/bin/env bash
# bench/run remote: messages/s through a trivial remote node (identity) with
# 1, 2 and 4 workers at batch sizes 1 and 64, against the broker's floor
# measured in the same run (plumber_remote_bench floor: a hiredis loop issuing
# the same XADD / XREADGROUP / XACK commands, pipelined), and the round trip
# at batch 1 (p50/p99, one request at a time through Pipeline::process).
#   bench/remote_bench.sh BUILD_DIR [--messages N]
set -euo pipefail
build="$(realpath "${1:?build dir}")"; shift
messages=200000
[[ "${1:-}" == --messages ]] && messages="$2"
bench="$build/bench/plumber_remote_bench"
work="$(mktemp -d)"
pids=()
stop_workers() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_workers; kill $redis 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
broker="redis://127.0.0.1:$port"
# appendonly with fsync every second: the deployment docs/scale-out.md recommends.
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save "" --appendonly yes \
  --appendfsync everysec --daemonize no >"$work/redis.log" 2>&1 &
redis=$!
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done

graph() {  # graph BATCH SOURCE -> file
  local batch=$1 source=$2 file="$work/g_$1_$2.json"
  python3 - "$file" "$broker" "$batch" "$source" "$messages" <<'PY'
import json, sys
file, broker, batch, source, messages = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
src = {"id": "n", "coroutine": "input"} if source == "input" else \
      {"id": "n", "coroutine": "range", "params": {"stop": messages}}
json.dump({"plumber": 1, "name": "bench", "settings": {"broker": broker, "queue_size": 1024},
           "nodes": [src, {"id": "sq", "coroutine": "identity", "batch_size": batch,
                           "remote": {"in_flight": 256 if batch == 1 else 1024}},
                     {"id": "out", "coroutine": "identity" if source == "input" else "discard"}],
           "edges": [{"from": "n", "to": "sq"}, {"from": "sq", "to": "out"}]}, open(file, "w"))
PY
  echo "$file"
}

start_workers() {  # start_workers N GRAPH
  for _ in $(seq "$1"); do
    "$bench" worker --graph "$2" >>"$work/workers.log" 2>&1 &
    pids+=($!)
  done
  until [ "$(redis-cli -p "$port" scard plumber:bench:sq:workers)" -ge "$1" ]; do sleep 0.05; done
}

echo "remote node over Redis Streams (redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), appendfsync everysec), $messages messages, trivial step"
printf "  %-34s %12s %10s\n" "case" "msg/s" "of floor"
for batch in 1 64; do
  in_flight=$([ "$batch" = 1 ] && echo 256 || echo 1024)  # as in the graphs below
  floor=$("$bench" floor --broker "$broker" --messages "$messages" --batch "$batch" --in-flight "$in_flight")
  printf "  %-34s %12.0f %10s\n" "floor (hiredis loop), batch $batch" "$floor" "1.00"
  g=$(graph "$batch" range)
  for workers in 1 2 4; do
    start_workers "$workers" "$g"
    rate=$("$bench" throughput --graph "$g")
    stop_workers
    ratio=$(python3 -c "print(f'{$rate / $floor:.2f}')")
    printf "  %-34s %12.0f %10s\n" "plumber, $workers worker(s), batch $batch" "$rate" "$ratio"
  done
done

g=$(graph 1 input)
start_workers 1 "$g"
read -r p50 p99 max wrong < <("$bench" latency --graph "$g" --requests 3000)
stop_workers
echo "  round trip at batch 1, one request at a time (Pipeline::process, 1 worker): p50 ${p50} us, p99 ${p99} us, max ${max} us (wrong: $wrong)"
