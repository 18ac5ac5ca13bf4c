#!/usr/bin/python3
"""`plumber run` as a user runs it, timed from outside (bench/run input, bench/run scaling).

  cli_bench.py input   --plumber EXE [--lines N] [--runs N]
      bench/jsonl_echo.json (input -> identity -> print) over an N-line JSONL
      file given with --input, redirected to stdin, and through `cat |`, against
      `jq -c .` on the same file, in the same run; best of --runs each.
  cli_bench.py scaling --plumber EXE [--runs N]
      time per message and peak RSS of `plumber run` as messages grow 10x and
      100x (a 4-hop chain), and as the graph grows to 10, 100, 1,000 nodes.

Every figure is a wall time measured around the whole process (start-up
included; the scaling table subtracts the start-up of an empty run). The runs
of one table are interleaved, so a slow phase of a shared machine hits all its
cases: compare the ratios, not the absolute figures.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

TARGET_JQ_RATIO = 2.0      # design.md: >= 2x jq -c .
STDIN_TOLERANCE = 1.15     # "stdin as fast as --input": within 15 % (noise on a shared machine)


def timed(command, stdin=None, shell=False):
    """Runs `command` with stdout to /dev/null: (seconds, peak RSS in KiB, exit status).

    The peak RSS comes from /usr/bin/time: a child forked from this Python
    process would report this process's own peak (Linux keeps it across exec).
    """
    if shell:
        command = ["/bin/sh", "-c", command]
    with tempfile.NamedTemporaryFile("r") as report, open(os.devnull, "wb") as null:
        started = time.perf_counter()
        status = subprocess.call(["/usr/bin/time", "-f", "%M", "-o", report.name] + command,
                                 stdin=stdin, stdout=null)
        seconds = time.perf_counter() - started
        lines = report.read().split()
    return seconds, int(lines[-1]) if lines else 0, status


def best_of(runs, cases):
    """cases: name -> function returning (seconds, rss, status). Interleaved runs; the best of each."""
    best = {}
    for _ in range(runs):
        for name, run in cases.items():
            seconds, rss, status = run()
            if status != 0:
                sys.exit(f"{name}: exit status {status}")
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, rss)
    return best


def write_jsonl(path, lines):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    rnd = random.Random(1)
    with open(path, "w") as out:
        for n in range(lines):
            out.write(json.dumps({"id": n, "name": f"user-{n} {rnd.choice(words)}",
                                  "tags": rnd.sample(words, 3),
                                  "score": round(rnd.random() * 100, 3),
                                  "active": n % 3 == 0}, separators=(",", ":")) + "\n")


def bench_input(args, root):
    if shutil.which("jq") is None:
        sys.exit("jq is missing: tools/setup-deps --bench installs it")
    graph = os.path.join(root, "bench", "jsonl_echo.json")
    work = tempfile.mkdtemp(prefix="plumber_bench_input_")
    try:
        data = os.path.join(work, "input.jsonl")
        write_jsonl(data, args.lines)
        size = os.path.getsize(data)
        # Once, untimed: every line comes out.
        out = subprocess.run([args.plumber, "run", graph, "--input", data],
                             stdout=subprocess.PIPE, check=True).stdout
        printed = out.count(b"\n")
        if printed != args.lines:
            sys.exit(f"plumber printed {printed} lines of {args.lines}")
        del out

        def stdin_file():
            with open(data, "rb") as stdin:
                return timed([args.plumber, "run", graph], stdin=stdin)

        cases = {
            "plumber --input FILE": lambda: timed([args.plumber, "run", graph, "--input", data]),
            "plumber < FILE": stdin_file,
            "cat FILE | plumber": lambda: timed(
                f"cat '{data}' | '{args.plumber}' run '{graph}'", shell=True),
            "jq -c . FILE": lambda: timed(["jq", "-c", ".", data]),
        }
        best = best_of(args.runs, cases)
    finally:
        shutil.rmtree(work)

    print(f"input workload: {args.lines:,} JSONL lines ({size / 2**20:.1f} MiB), "
          f"bench/jsonl_echo.json (input -> identity -> print), stdout to /dev/null, "
          f"best of {args.runs}")
    print(f"{'case':<24} {'seconds':>8} {'lines/s':>12} {'peak RSS':>10} {'vs jq':>7}")
    jq = best["jq -c . FILE"][0]
    for name, (seconds, rss) in best.items():
        print(f"{name:<24} {seconds:8.3f} {args.lines / seconds:12,.0f} {rss / 1024:8.1f} MB "
              f"{jq / seconds:6.2f}x")
    verdicts = []
    for name in ("plumber --input FILE", "plumber < FILE", "cat FILE | plumber"):
        ratio = jq / best[name][0]
        verdicts.append((f"{name}: >= {TARGET_JQ_RATIO:g}x jq -c .", f"{ratio:.2f}x",
                         ratio >= TARGET_JQ_RATIO))
    reference = best["plumber --input FILE"][0]
    for name in ("plumber < FILE", "cat FILE | plumber"):
        ratio = best[name][0] / reference
        verdicts.append((f"{name} as fast as --input (within {STDIN_TOLERANCE - 1:.0%})",
                         f"{ratio:.2f}x its time", ratio <= STDIN_TOLERANCE))
    print()
    for what, measured, met in verdicts:
        print(f"  {'MET   ' if met else 'MISSED'}  {what}: {measured}")


def graph_file(work, name, nodes, edges):
    path = os.path.join(work, name + ".json")
    with open(path, "w") as out:
        json.dump({"plumber": 1, "name": name, "nodes": nodes, "edges": edges}, out)
    return path


def chain_graph(work, messages):
    """range -> identity x 3 -> discard: the 4-hop chain."""
    nodes = [{"id": "src", "coroutine": "range", "params": {"stop": messages}}]
    nodes += [{"id": f"hop{i}", "coroutine": "identity"} for i in range(1, 4)]
    nodes.append({"id": "out", "coroutine": "discard"})
    edges = [{"from": nodes[i]["id"], "to": nodes[i + 1]["id"]} for i in range(len(nodes) - 1)]
    return graph_file(work, f"chain_{messages}", nodes, edges)


def fanout_graph(work, branches, messages):
    """range -> `branches` identity steps, each into its own discard: 2 * branches + 1 nodes."""
    nodes = [{"id": "src", "coroutine": "range", "params": {"stop": messages}}]
    edges = []
    for b in range(branches):
        nodes += [{"id": f"b{b}", "coroutine": "identity"}, {"id": f"s{b}", "coroutine": "discard"}]
        edges += [{"from": "src", "to": f"b{b}"}, {"from": f"b{b}", "to": f"s{b}"}]
    return graph_file(work, f"fanout_{branches}", nodes, edges)


def parallel_graph(work, chains, messages):
    """`chains` separate chains range -> identity -> discard: 3 * chains nodes."""
    nodes, edges = [], []
    per_chain = messages // chains
    for c in range(chains):
        nodes += [{"id": f"r{c}", "coroutine": "range", "params": {"stop": per_chain}},
                  {"id": f"i{c}", "coroutine": "identity"},
                  {"id": f"d{c}", "coroutine": "discard"}]
        edges += [{"from": f"r{c}", "to": f"i{c}"}, {"from": f"i{c}", "to": f"d{c}"}]
    return graph_file(work, f"parallel_{chains}", nodes, edges), per_chain * chains


def bench_scaling(args):
    work = tempfile.mkdtemp(prefix="plumber_bench_scaling_")
    run = lambda graph: (lambda: timed([args.plumber, "run", graph]))
    try:
        empty = chain_graph(work, 0)
        rows = []  # (table, case, nodes, units, unit name, graph)
        for messages in (100_000, 1_000_000, 10_000_000):
            rows.append(("messages", f"4-hop chain, {messages:,} messages", 5, messages, "message",
                         chain_graph(work, messages)))
        deliveries = 2_000_000
        for branches in (5, 50, 500):
            messages = deliveries // branches
            rows.append(("width", f"fan-out to {branches} branches, {messages:,} messages", 2 * branches + 1,
                         messages * branches, "delivery", fanout_graph(work, branches, messages)))
        for chains in (3, 33, 333):
            graph, total = parallel_graph(work, chains, 1_000_000)
            rows.append(("width", f"{chains} parallel chains, {total:,} messages", 3 * chains, total,
                         "message", graph))
        cases = {"start-up (empty chain)": run(empty)}
        cases.update({row[1]: run(row[5]) for row in rows})
        best = best_of(args.runs, cases)
    finally:
        shutil.rmtree(work)

    startup, startup_rss = best["start-up (empty chain)"]
    print(f"scaling: `plumber run`, 1 thread, best of {args.runs}; time per unit = "
          f"(wall - start-up {startup * 1e3:.0f} ms) / units; peak RSS of the process "
          f"(start-up alone: {startup_rss / 1024:.1f} MB)")
    print(f"{'case':<48} {'nodes':>6} {'units':>12} {'wall s':>8} {'ns/unit':>9} {'peak RSS':>10}")
    for table, name, nodes, units, unit, _ in rows:
        seconds, rss = best[name]
        per_unit = max(seconds - startup, 0) / units * 1e9
        print(f"{name:<48} {nodes:6d} {units:12,d} {seconds:8.3f} {per_unit:7.0f} ns "
              f"{rss / 1024:7.1f} MB   ({unit})")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=["input", "scaling"])
    parser.add_argument("--plumber", required=True, help="the plumber executable (release build)")
    parser.add_argument("--lines", type=int, default=1_000_000, help="input: lines in the file")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each case (the best counts)")
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if args.workload == "input":
        bench_input(args, root)
    else:
        bench_scaling(args)


if __name__ == "__main__":
    main()
