"""Python steps (`exec` + python/plumber_step) against Python's own
ProcessPoolExecutor, in the same run; and the CatDetector's batching gain.

    /usr/bin/python3 bench/python_steps.py [--plumber build/release/plumber] [--tasks N] [--runs R]

Trivial step (`return value + 1`), 2 processes each side. Plumber's figure is
(time of a run with N tasks - time of a run with none) / N, so that starting
the copies is not counted, as the peer's pool is warmed up first. Prints the
median of R runs and the ratio.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = os.path.join(ROOT, "python")

STEP = """import plumber_step

@plumber_step.step(batch=%s)
def handle(value):
    return %s
"""


def touch(x):
    return x + 1


def graph(path, script, tasks, batch_size, procs=2, extra=None):
    node = {"id": "step", "coroutine": "exec", "procs": procs,
            "params": {"command": [sys.executable, script], "env": {"PYTHONPATH": KIT}}}
    if batch_size > 1:
        node["batch_size"] = batch_size
    node.update(extra or {})
    doc = {"plumber": 1, "settings": {"queue_size": 1024}, "nodes": [
        {"id": "src", "coroutine": "range", "params": {"stop": tasks}},
        node,
        {"id": "out", "coroutine": "discard"}],
        "edges": [{"from": "src", "to": "step"}, {"from": "step", "to": "out"}]}
    with open(path, "w") as f:
        json.dump(doc, f)


def run_plumber(plumber, path):
    start = time.perf_counter()
    subprocess.run([plumber, "run", path], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def plumber_rate(plumber, tmp, tasks, batch_size, runs):
    script = os.path.join(tmp, "batch.py" if batch_size > 1 else "one.py")
    with open(script, "w") as f:
        f.write(STEP % ((True, "[v + 1 for v in value]") if batch_size > 1 else (False, "value + 1")))
    empty, full = os.path.join(tmp, "empty.json"), os.path.join(tmp, "full.json")
    graph(empty, script, 0, batch_size)
    graph(full, script, tasks, batch_size)
    rates = []
    for _ in range(runs):
        base = run_plumber(plumber, empty)
        rates.append(tasks / max(run_plumber(plumber, full) - base, 1e-9))
    return statistics.median(rates)


def pool_rate(tasks, runs, chunksize):
    with ProcessPoolExecutor(max_workers=2) as pool:
        def once():
            if chunksize == 1:
                for f in [pool.submit(touch, i) for i in range(tasks)]:
                    f.result()
            else:
                for _ in pool.map(touch, range(tasks), chunksize=chunksize):
                    pass
        once()  # warm-up: starts the workers
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            once()
            rates.append(tasks / (time.perf_counter() - start))
    return statistics.median(rates)


def cat_detector(plumber, tmp, batch_size):
    path = os.path.join(tmp, "cats.json")
    script = os.path.join(ROOT, "graphs", "steps", "cat_detector.py")
    doc = {"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "range", "params": {"stop": 40}},
        {"id": "wrap", "coroutine": "exec", "params": {
            "command": [sys.executable, "-c", "import plumber_step\n"
                        "plumber_step.serve(lambda v: {'n': v})"],
            "env": {"PYTHONPATH": KIT}}},
        {"id": "cats", "coroutine": "exec", "batch_size": batch_size,
         "params": {"command": [sys.executable, script], "env": {"PYTHONPATH": KIT}}},
        {"id": "out", "coroutine": "discard"}],
        "edges": [{"from": "src", "to": "wrap"}, {"from": "wrap", "to": "cats"},
                  {"from": "cats", "to": "out"}]}
    with open(path, "w") as f:
        json.dump(doc, f)
    best = None
    for _ in range(3):
        run = subprocess.run([plumber, "run", "--stats", path], check=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # The worker table's line for "cats": ... queue-ms worker-ms pids
        for line in run.stderr.splitlines():
            fields = line.split()
            if fields and fields[0] == "cats" and len(fields) >= 10 and fields[1].isdigit():
                seconds = float(fields[8]) / 1e3
                best = seconds if best is None else min(best, seconds)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plumber", default=os.path.join(ROOT, "build", "release", "plumber"))
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; trivial step, 2 processes each side")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            ("unbatched", plumber_rate(args.plumber, tmp, args.tasks, 1, args.runs),
             pool_rate(args.tasks, args.runs, 1), "submit() each"),
            # 10x the tasks: a batched run is short next to starting the copies.
            ("batch 64", plumber_rate(args.plumber, tmp, 10 * args.tasks, 64, args.runs),
             pool_rate(10 * args.tasks, args.runs, 64), "map(chunksize=64)"),
        ]
        for name, ours, peer, peer_name in rows:
            print(f"  {name:<10} Plumber exec {ours / 1e3:8.2f} k tasks/s   "
                  f"ProcessPoolExecutor {peer_name:<18} {peer / 1e3:8.2f} k tasks/s   "
                  f"ratio {ours / peer:5.2f}x")
        one, twenty = cat_detector(args.plumber, tmp, 1), cat_detector(args.plumber, tmp, 20)
        print(f"  CatDetector, 40 images, time inside the step: batch_size 1 {one:.2f} s, "
              f"batch_size 20 {twenty:.2f} s (best of 3): {one / twenty:.2f}x")


if __name__ == "__main__":
    main()
