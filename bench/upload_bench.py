"""POST /v1/graphs/NAME/process with a binary body (into shared memory) against the
same bytes as a JSON string body, on one `plumber serve`, in the same run.

    /usr/bin/python3 bench/upload_bench.py --plumber build/release/plumber [--runs N]

Graphs: `input -> discard` (the server's own cost: read, enter the graph, answer)
and `input -> sha256 (procs: 1)` (a worker reads the bytes; the JSON body goes as a
string, the binary one as a blob in shared memory). Prints MiB/s, best of --runs.
"""
import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import time


def graph(name, *nodes):
    doc = {"plumber": 1, "name": name, "nodes": [], "edges": []}
    for i, node in enumerate(nodes):
        doc["nodes"].append(node)
        if i:
            doc["edges"].append({"from": nodes[i - 1]["id"], "to": node["id"]})
    return doc


def post(port, name, body, content_type):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", f"/v1/graphs/{name}/process", body=body,
                     headers={"Content-Type": content_type})
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, (response.status, data[:300])
        return data
    finally:
        conn.close()


def best_seconds(runs, fn):
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plumber", default="build/release/plumber")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    graphs = tempfile.mkdtemp(prefix="plumber-upload-bench-")
    for doc in (graph("drop", {"id": "in", "coroutine": "input"},
                      {"id": "out", "coroutine": "discard"}),
                graph("hash", {"id": "in", "coroutine": "input"},
                      {"id": "sha", "coroutine": "sha256", "procs": 1})):
        with open(os.path.join(graphs, doc["name"] + ".json"), "w") as f:
            json.dump(doc, f)
    server = subprocess.Popen([args.plumber, "serve", "--port", "0", "--graphs", graphs,
                               "--max-frame", str(1 << 30), "--max-upload-bytes", str(1 << 30)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        port = int(re.search(rb":(\d+) ", server.stdout.readline()).group(1))
        print(f"{'body':>8} {'graph':>6} {'binary MiB/s':>13} {'JSON MiB/s':>11} {'ratio':>6}")
        for mib in (1, 10, 64):
            data = os.urandom(mib << 20)
            text = data.hex()[: mib << 20]  # a JSON string of the same size, ASCII
            as_json = json.dumps(text).encode()
            for name in ("drop", "hash"):
                if name == "hash":
                    reply = json.loads(post(port, name, data, "application/octet-stream"))
                    assert reply["value"] == hashlib.sha256(data).hexdigest()
                binary = best_seconds(args.runs,
                                      lambda: post(port, name, data, "application/octet-stream"))
                textual = best_seconds(args.runs,
                                       lambda: post(port, name, as_json, "application/json"))
                print(f"{mib:>5} MiB {name:>6} {mib / binary:>13.0f} {mib / textual:>11.0f} "
                      f"{textual / binary:>5.1f}x")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(graphs)


if __name__ == "__main__":
    main()
