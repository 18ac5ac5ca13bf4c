"""The `watch` operation: every run on the server, whichever connection started
it, and every shared /v1 pipeline, with per-node counters; `unwatch` stops it."""
import asyncio
import unittest

from harness import (GRAPHS, Server, connect, graph, main, recv, recv_until, run_async, send,
                     submit)


class Watch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(graphs=GRAPHS).start()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.stderr.decode(errors="replace")

    def test_a_watcher_sees_another_connections_run_and_the_v1_pipelines(self):
        async def scenario():
            async with connect(self.server) as worker, connect(self.server) as watcher:
                accepted = await submit(worker, graph=graph(("in", "input"), ("up", "upper"),
                                                            edges=[("in", "up")], name="seen"))
                run = accepted["run"]
                await send(worker, {"op": "input", "run": run, "values": ["a", "b"]})
                await recv_until(worker, "output")
                await recv_until(worker, "output")
                await send(watcher, {"op": "watch", "interval_ms": 100})
                frame = await recv(watcher)
                self.assertEqual(frame["type"], "watch")
                self.assertIsInstance(frame["you"], int)
                mine = [r for r in frame["runs"] if r["graph"] == "inline:seen"]
                self.assertEqual(len(mine), 1, frame["runs"])
                self.assertEqual(mine[0]["run"], run)
                self.assertNotEqual(mine[0]["connection"], frame["you"])
                up = next(s for s in mine[0]["stats"] if s["node"] == "up")
                self.assertEqual((up["received"], up["emitted"]), (2, 2))
                services = {s["name"]: s for s in frame["services"]}
                self.assertIn("upper_input", services)
                self.assertEqual(services["upper_input"]["version"], 1)
                self.assertFalse(services["upper_input"]["retired"])
                # The run ends: the next frames no longer list it.
                await send(worker, {"op": "end", "run": run})
                await recv_until(worker, "done", run=run)
                while True:
                    frame = await recv(watcher)
                    if not [r for r in frame["runs"] if r["graph"] == "inline:seen"]:
                        break
                # unwatch: a stats request gets its answer, and no watch frame follows it.
                await send(watcher, {"op": "unwatch"})
                await send(watcher, {"op": "stats", "run": 99, "ref": "after"})
                while True:
                    frame = await recv(watcher)
                    if frame.get("ref") == "after":
                        break
                self.assertEqual(frame["code"], "run.unknown")
                await send(watcher, {"op": "stats", "run": 98, "ref": "later"})
                frame = await recv(watcher)
                self.assertEqual(frame.get("ref"), "later")

        run_async(scenario())

    def test_watch_refuses_a_bad_interval(self):
        async def scenario():
            async with connect(self.server) as ws:
                await send(ws, {"op": "watch", "interval_ms": 10})
                frame = await recv(ws)
                self.assertEqual((frame["code"], frame["pointer"]), ("protocol.out_of_range", "/interval_ms"))

        run_async(scenario())


if __name__ == "__main__":
    main()
