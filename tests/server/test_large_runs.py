"""Large fan-out runs end to end: 20,000 values through a 14-step chain (two
`sleep` steps with concurrency 32) into 6 sinks, 120,000 outputs a run (24,000
under the sanitizers), through
the WebSocket protocol, `plumber submit` and (in test_browser.py) the web page.
Every output arrives, then `done`, every time; a slow reader holds the run
still with a bounded send queue instead of losing anything."""
import asyncio
import collections
import json
import os
import subprocess
import tempfile
import unittest

from harness import GUARD, PLUMBER, Server, connect, main, metric, recv, run_async, send

# Values a run (sanitizer builds set 4,000: a served output costs ~15x more
# there, and 24,000 outputs are still far beyond every queue and send limit).
VALUES = int(os.environ.get("PLUMBER_LARGE_VALUES", "20000"))
SINKS = 6
# Runs of each kind beyond the first (sanitizer builds set 1: a run is slow there).
REPEATS = int(os.environ.get("PLUMBER_LARGE_REPEATS", "2"))
# A hang guard for one large run (never an expectation): sanitizer builds are slow.
LARGE_GUARD = GUARD * 10


def large_graph():
    nodes = [{"id": "src", "coroutine": "range", "params": {"stop": VALUES}}]
    edges = []
    previous = "src"
    for i in range(14):
        node = {"id": f"s{i}", "coroutine": "identity"}
        if i in (4, 9):
            node = {"id": f"s{i}", "coroutine": "sleep", "params": {"ms": 1}, "concurrency": 32}
        nodes.append(node)
        edges.append({"from": previous, "to": node["id"]})
        previous = node["id"]
    for k in range(SINKS):
        nodes.append({"id": f"out{k}", "coroutine": "identity"})
        edges.append({"from": previous, "to": f"out{k}"})
    return {"plumber": 1, "name": "large", "nodes": nodes, "edges": edges}


async def run_once(ws, pause_every=0):
    """Submits the large graph and reads until its done frame; returns (outputs, done)."""
    await send(ws, {"op": "submit", "graph": large_graph()})
    accepted = await recv(ws)
    assert accepted["type"] == "accepted", accepted
    run = accepted["run"]
    seen = collections.Counter()
    received = 0
    while True:
        frame = await recv(ws, timeout=LARGE_GUARD)
        if frame.get("run") != run:
            continue
        if frame["type"] == "output":
            seen[frame["id"]] += 1
            received += 1
            if pause_every and received % pause_every == 0:
                await asyncio.sleep(0.05)  # a slow reader
        elif frame["type"] == "done":
            return seen, frame
        else:
            raise AssertionError(f"unexpected frame {frame}")


class LargeRuns(unittest.TestCase):
    def test_every_output_and_done_every_time(self):
        with Server() as server:
            async def go():
                async with connect(server, max_size=None) as ws:
                    for _ in range(max(2, REPEATS)):
                        seen, done = await run_once(ws)
                        self.assertEqual(done["status"], "completed")
                        self.assertEqual(done["outputs"], VALUES * SINKS)
                        self.assertEqual(sum(seen.values()), VALUES * SINKS)
                        self.assertEqual(len(seen), VALUES)
                        self.assertEqual(set(seen.values()), {SINKS})
            run_async(go(), guard=LARGE_GUARD * 3)

    def test_a_slow_reader_gets_everything_with_a_bounded_queue(self):
        limit = 65536
        with Server("--max-send-queue", str(limit)) as server:
            async def go():
                async with connect(server, max_size=None, max_queue=4) as ws:
                    task = asyncio.ensure_future(run_once(ws, pause_every=5000))
                    highest = 0
                    while not task.done():
                        await asyncio.sleep(0.1)
                        m = server.metrics()
                        highest = max(highest, metric(m, "plumber_ws_send_queue_bytes"))
                    seen, done = task.result()
                    self.assertEqual(done["status"], "completed")
                    self.assertEqual(sum(seen.values()), VALUES * SINKS)
                    self.assertLessEqual(highest, limit)
                    m = server.metrics()
                    self.assertEqual(metric(m, "plumber_ws_closed_total", reason="send_queue_full"), 0)
            run_async(go(), guard=LARGE_GUARD * 3)

    def test_plumber_submit_prints_every_output(self):
        with Server() as server, tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "large.json")
            with open(path, "w") as f:
                json.dump(large_graph(), f)
            for _ in range(REPEATS):
                proc = subprocess.run([PLUMBER, "submit", f"ws://127.0.0.1:{server.port}", path],
                                      stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=LARGE_GUARD)
                self.assertEqual(proc.returncode, 0, proc.stderr.decode(errors="replace"))
                lines = proc.stdout.decode().splitlines()
                self.assertEqual(len(lines), VALUES * SINKS)
                counts = collections.Counter(lines)
                self.assertEqual(len(counts), VALUES)
                self.assertEqual(set(counts.values()), {SINKS})


if __name__ == "__main__":
    main()
