#!/usr/bin/python3
"""Load figures for `plumber serve` (docs/performance.md, "The server").

Run by bench/server (release build). All traffic stays on 127.0.0.1, every
loop is bounded, and the script stops the server it started.

  1. held:    N idle WebSocket clients at once (server RSS before and after),
              while a fresh client is still served;
  2. stream:  K `plumber submit` clients at once, each a run of M outputs
              (range -> identity), outputs/s over all;
  3. process: POST /v1/graphs/upper_input/process with wrk, 100 connections,
              requests/s and p99 latency (wrk's own figures);
and the server's RSS at the end.
"""
import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import websockets


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_server(plumber, graphs, threads):
    proc = subprocess.Popen([plumber, "serve", "--port", "0", "--graphs", graphs,
                             "--threads", str(threads), "--max-connections", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline().decode()
    port = int(re.search(r":(\d+) ", line).group(1))
    return proc, port


async def hold(port, clients, pid):
    url = f"ws://127.0.0.1:{port}/ws"
    before = rss_mib(pid)
    held = []
    for start in range(0, clients, 500):
        batch = await asyncio.gather(*(websockets.connect(url, open_timeout=60)
                                       for _ in range(start, min(clients, start + 500))))
        held.extend(batch)
    after = rss_mib(pid)
    # Still served while they are held.
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"op": "submit", "name": "upper_input"}))
        run = json.loads(await ws.recv())["run"]
        await ws.send(json.dumps({"op": "input", "run": run, "value": "x"}))
        await ws.send(json.dumps({"op": "end", "run": run}))
        while json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] != "done":
            pass
    await asyncio.gather(*(ws.close() for ws in held))
    return before, after


def stream(plumber, port, clients, outputs):
    graph = {"plumber": 1, "name": "stream", "nodes": [
        {"id": "n", "coroutine": "range", "params": {"stop": outputs}},
        {"id": "out", "coroutine": "identity"}], "edges": [{"from": "n", "to": "out"}]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(graph, f)
    try:
        start = time.monotonic()
        procs = [subprocess.Popen([plumber, "submit", f"ws://127.0.0.1:{port}", f.name],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                 for _ in range(clients)]
        lines = 0
        for p in procs:
            out, _ = p.communicate(timeout=600)
            assert p.returncode == 0, p.returncode
            lines += out.count(b"\n")
        seconds = time.monotonic() - start
    finally:
        os.unlink(f.name)
    assert lines == clients * outputs, (lines, clients * outputs)
    return lines / seconds, seconds


def process(port, seconds, connections, threads):
    if not shutil.which("wrk"):
        return None
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "process.lua")
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
                          "--latency", "-s", script,
                          f"http://127.0.0.1:{port}/v1/graphs/upper_input/process"],
                         capture_output=True, text=True, timeout=seconds + 120).stdout
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plumber", default="build/release/plumber")
    parser.add_argument("--graphs", default="graphs")
    parser.add_argument("--threads", type=int, default=1, help="server --threads")
    parser.add_argument("--hold", type=int, default=10000)
    parser.add_argument("--stream-clients", type=int, default=8)
    parser.add_argument("--stream-outputs", type=int, default=200000)
    parser.add_argument("--wrk-seconds", type=int, default=10)
    parser.add_argument("--wrk-connections", type=int, default=100)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    proc, port = start_server(args.plumber, args.graphs, args.threads)
    try:
        time.sleep(0.2)
        print(f"server --threads {args.threads}, pid {proc.pid}, RSS at start {rss_mib(proc.pid):.1f} MiB")
        before, after = asyncio.run(hold(port, args.hold, proc.pid))
        print(f"held {args.hold} idle WebSocket clients at once: RSS {before:.1f} -> {after:.1f} MiB "
              f"({(after - before) * 1024 / max(1, args.hold):.1f} KiB per connection); a fresh client was served")
        rate, seconds = stream(args.plumber, port, args.stream_clients, args.stream_outputs)
        print(f"stream: {args.stream_clients} clients x {args.stream_outputs} outputs in {seconds:.2f} s: "
              f"{rate / 1e3:.0f} k outputs/s (received and printed by plumber submit)")
        print(f"RSS after streaming: {rss_mib(proc.pid):.1f} MiB")
        out = process(port, args.wrk_seconds, args.wrk_connections, 2)
        if out is None:
            print("process: wrk not installed (tools/setup-deps --bench installs it)")
        else:
            print(f"process (wrk, {args.wrk_connections} connections, {args.wrk_seconds} s):")
            print("\n".join("  " + line for line in out.strip().splitlines()))
        print(f"RSS at the end: {rss_mib(proc.pid):.1f} MiB")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


if __name__ == "__main__":
    main()
