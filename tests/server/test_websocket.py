"""WebSocket protocol against the real server (docs/protocol.md)."""
import asyncio
import json
import unittest

from harness import (UPPER, Server, connect, graph, main, metric, recv, recv_until, run_async,
                     send, submit)


class WebSocket(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server().start()

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        assert code == 0, f"plumber serve exited {code}: {cls.server.stderr.decode(errors='replace')}"

    def test_submit_by_name_streams_outputs_then_done(self):
        async def go():
            async with connect(self.server) as ws:
                accepted = await submit(ws, name="strings", ref="s1")
                self.assertEqual(accepted["type"], "accepted", accepted)
                self.assertEqual(accepted["ref"], "s1")
                run = accepted["run"]
                shape = accepted["graph"]
                self.assertEqual(shape["name"], "strings")
                self.assertEqual(shape["order"][0], "inp")
                self.assertEqual(len(shape["edges"]), 5)
                frames = await recv_until(ws, "done", run)
                outputs = [f for f in frames if f["type"] == "output"]
                self.assertEqual(sorted(f["value"] for f in outputs),
                                 sorted(["REBMULP / rebmulp", "OISA / oisa", "ENITUOROC / enituoroc",
                                         "ENILEPIP / enilepip", "DI YB PIZ / di yb piz"]))
                self.assertTrue(all(f["node"] == "out" and f["run"] == run for f in outputs))
                self.assertEqual(sorted(f["id"] for f in outputs), [1, 2, 3, 4, 5])
                done = frames[-1]
                self.assertEqual(done["status"], "completed")
                self.assertEqual(done["outputs"], 5)
                stats = {s["node"]: s for s in done["stats"]}
                self.assertEqual(stats["out"]["received"], 10)
                self.assertEqual(stats["out"]["emitted"], 5)
                self.assertEqual(stats["inp"]["emitted"], 5)
        run_async(go())

    def test_trace_on_request_comes_before_done(self):
        async def go():
            async with connect(self.server) as ws:
                accepted = await submit(ws, name="strings", trace=True)
                self.assertEqual(accepted["type"], "accepted", accepted)
                run = accepted["run"]
                frames = await recv_until(ws, "done", run)
                traces = [f for f in frames if f["type"] == "trace"]
                self.assertEqual(len(traces), 1)
                self.assertEqual(frames[-2]["type"], "trace")  # after the outputs, before done
                events = traces[0]["trace"]["traceEvents"]
                tracks = {e["args"]["name"] for e in events
                          if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == 1}
                self.assertEqual(len(tracks), len(accepted["graph"]["order"]))
                for e in events:
                    self.assertIn(e["ph"], ("M", "X", "s", "f"), e)
                    self.assertIsInstance(e["pid"], int, e)
                    self.assertIsInstance(e["tid"], int, e)
                    if e["ph"] == "X":
                        self.assertGreaterEqual(e["dur"], 0, e)
                self.assertTrue(any(e["ph"] == "X" and e["cat"] == "step" for e in events))
                # "trace" is a boolean
                await send(ws, {"op": "submit", "name": "strings", "trace": 1})
                error = await recv(ws)
                self.assertEqual(error["code"], "protocol.wrong_type", error)
                self.assertEqual(error["pointer"], "/trace")
        run_async(go())

    def test_inline_graph_with_inputs_errors_and_end(self):
        async def go():
            async with connect(self.server) as ws:
                accepted = await submit(ws, graph=UPPER)
                self.assertEqual(accepted["type"], "accepted", accepted)
                self.assertTrue(accepted["graph"]["input"])
                run = accepted["run"]
                await send(ws, {"op": "input", "run": run, "value": "hello"})
                await send(ws, {"op": "input", "run": run, "values": ["a", 42, "b"]})
                await send(ws, {"op": "end", "run": run})
                frames = await recv_until(ws, "done", run)
                values = [f["value"] for f in frames if f["type"] == "output"]
                self.assertEqual(values, ["HELLO", "A", "B"])
                failed = [f for f in frames if f["type"] == "failed"]
                self.assertEqual(len(failed), 1)
                self.assertEqual(failed[0]["node"], "up")
                self.assertEqual(failed[0]["code"], "step_failed")
                self.assertEqual(failed[0]["id"], 3)
                self.assertIn("message", failed[0])
                self.assertEqual(frames[-1]["failed"], 1)
                # Input after end, to a finished run: a precise error, and the connection goes on.
                await send(ws, {"op": "input", "run": run, "value": "late"})
                error = await recv(ws)
                self.assertEqual(error["code"], "run.unknown")
                self.assertEqual(error["pointer"], "/run")
        run_async(go())

    def test_input_after_end_is_refused(self):
        async def go():
            async with connect(self.server) as ws:
                slow = graph(("in", "input"), ("s", "sleep", {"ms": 200}),
                             edges=[("in", "s")])
                run = (await submit(ws, graph=slow))["run"]
                await send(ws, {"op": "input", "run": run, "value": 1})
                await send(ws, {"op": "end", "run": run})
                await send(ws, {"op": "input", "run": run, "value": 2, "ref": 7})
                await send(ws, {"op": "end", "run": run})
                frames = await recv_until(ws, "done", run)
                errors = [f for f in frames if f["type"] == "error"]
                self.assertEqual([e["code"] for e in errors], ["run.input_closed", "run.input_closed"])
                self.assertEqual(errors[0]["ref"], 7)
                self.assertEqual([f["value"] for f in frames if f["type"] == "output"], [1])
        run_async(go())

    def test_input_to_a_run_without_input_is_refused(self):
        async def go():
            async with connect(self.server) as ws:
                slow = graph(("n", "range", {"stop": 2}), ("s", "sleep", {"ms": 200}),
                             edges=[("n", "s")])
                run = (await submit(ws, graph=slow))["run"]
                await send(ws, {"op": "input", "run": run, "value": 1, "ref": 3})
                await send(ws, {"op": "end", "run": run})
                frames = await recv_until(ws, "done", run)
                errors = [f for f in frames if f["type"] == "error"]
                self.assertEqual([e["code"] for e in errors], ["run.no_input", "run.no_input"])
                self.assertEqual(errors[0]["ref"], 3)
                self.assertIn("has no `input` source", errors[0]["message"])
                self.assertEqual(sorted(f["value"] for f in frames if f["type"] == "output"), [0, 1])
        run_async(go())

    def test_several_runs_on_one_connection_and_cancel(self):
        async def go():
            async with connect(self.server) as ws:
                endless = graph(("n", "range", {"start": 0, "stop": 1000000000}),
                                ("s", "sleep", {"ms": 5}), edges=[("n", "s")], name="endless")
                a = (await submit(ws, graph=endless, ref="a"))["run"]
                b = (await submit(ws, graph=UPPER, ref="b"))
                self.assertEqual(b["ref"], "b")
                b = b["run"]
                self.assertNotEqual(a, b)
                await send(ws, {"op": "input", "run": b, "value": "x"})
                await send(ws, {"op": "end", "run": b})
                await send(ws, {"op": "stats", "run": a})
                frames = await recv_until(ws, "done", b)
                self.assertIn("X", [f["value"] for f in frames if f["type"] == "output" and f["run"] == b])
                await send(ws, {"op": "cancel", "run": a})
                frames = await recv_until(ws, "done", a)
                done = frames[-1]
                self.assertEqual(done["status"], "cancelled")
                self.assertEqual(done["reason"], "cancelled by the client")
                stats = [f for f in frames if f["type"] == "stats"]
                self.assertTrue(all(f["run"] == a for f in stats))
        run_async(go())

    def test_stop_drains_gracefully_and_stats_are_pushed(self):
        async def go():
            async with connect(self.server) as ws:
                endless = graph(("n", "range", {"start": 0, "stop": 1000000000}),
                                ("s", "sleep", {"ms": 2}, {"concurrency": 4}), edges=[("n", "s")])
                run = (await submit(ws, graph=endless, stats_ms=50))["run"]
                frames = await recv_until(ws, "stats", run)
                self.assertEqual([s["node"] for s in frames[-1]["stats"]], ["n", "s"])
                await send(ws, {"op": "stop", "run": run})
                frames = await recv_until(ws, "done", run)
                self.assertEqual(frames[-1]["status"], "completed")
                self.assertFalse([f for f in frames if f["type"] == "failed"])
        run_async(go())

    def test_many_connections_each_get_only_their_outputs(self):
        clients = 40

        async def one(k):
            async with connect(self.server) as ws:
                run = (await submit(ws, graph=UPPER))["run"]
                words = [f"c{k}w{i}" for i in range(25)]
                await send(ws, {"op": "input", "run": run, "values": words})
                await send(ws, {"op": "end", "run": run})
                frames = await recv_until(ws, "done", run)
                return words, [f["value"] for f in frames if f["type"] == "output"]

        async def go():
            results = await asyncio.gather(*(one(k) for k in range(clients)))
            for words, outputs in results:
                self.assertEqual(outputs, [w.upper() for w in words])
        run_async(go())
        metrics = self.server.metrics()
        self.assertGreaterEqual(metric(metrics, "plumber_runs_total", status="completed"), clients)


if __name__ == "__main__":
    main()
