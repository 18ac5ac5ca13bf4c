"""Hostile input is normal input: each gets a precise error or is closed, and
every other client keeps being served."""
import asyncio
import json
import os
import socket
import tempfile
import unittest

import websockets

from harness import (GUARD, UPPER, Server, connect, connect_non_reader, graph, main, metric, recv,
                     recv_until, run_async, send, submit)


async def served(server):
    """A fresh client still gets a full run through."""
    async with connect(server) as ws:
        run = (await submit(ws, graph=UPPER))["run"]
        await send(ws, {"op": "input", "run": run, "value": "still"})
        await send(ws, {"op": "end", "run": run})
        frames = await recv_until(ws, "done", run)
        return [f["value"] for f in frames if f["type"] == "output"] == ["STILL"]


class Frames(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.files = tempfile.TemporaryDirectory()
        with open(os.path.join(cls.files.name, "words.txt"), "w") as f:
            f.write("alpha\nbeta\n")
        cls.server = Server("--max-frame", "65536", "--max-nodes", "8", "--max-runs", "3").start()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.stderr.decode(errors="replace")
        cls.files.cleanup()

    def exchange(self, frames):
        """Sends raw frames on one connection; returns one reply per frame."""
        async def go():
            async with connect(self.server) as ws:
                replies = []
                for frame in frames:
                    await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
                    replies.append(await recv(ws))
                return replies
        return run_async(go())

    def test_bad_frames_get_precise_errors_and_the_connection_goes_on(self):
        replies = self.exchange([
            "this is not json",
            "[1, 2]",
            {"no": "op"},
            {"op": 7},
            {"op": "sumbit", "name": "strings"},
            {"op": "submit", "name": "strings", "nmae": "x"},
            {"op": "submit"},
            {"op": "submit", "graph": [], "ref": "r"},
            {"op": "input", "run": "one", "value": 1},
            {"op": "input", "run": 0, "value": 1},
            {"op": "input", "run": 99, "value": 1},
            {"op": "input", "run": 99},
            {"op": "cancel", "run": 12345},
            {"op": "submit", "name": "no_such_graph"},
            {"op": "submit", "name": "strings", "stats_ms": 1},
            b"\x00\x01binary",
        ])
        codes = [(r["type"], r["code"], r.get("pointer")) for r in replies]
        self.assertEqual(codes, [
            ("error", "protocol.malformed", None),
            ("error", "protocol.not_object", None),
            ("error", "protocol.missing_field", None),
            ("error", "protocol.wrong_type", "/op"),
            ("error", "protocol.unknown_op", "/op"),
            ("error", "protocol.unknown_field", "/nmae"),
            ("error", "protocol.missing_field", None),
            ("error", "protocol.wrong_type", "/graph"),
            ("error", "protocol.wrong_type", "/run"),
            ("error", "protocol.wrong_type", "/run"),
            ("error", "run.unknown", "/run"),
            ("error", "protocol.missing_field", None),
            ("error", "run.unknown", "/run"),
            ("error", "graph.unknown_name", "/name"),
            ("error", "protocol.out_of_range", "/stats_ms"),
            ("error", "protocol.binary_frame", None),
        ])
        self.assertIn("parse error at", replies[0]["message"])
        self.assertEqual(replies[4]["hint"], 'did you mean "submit"?')
        self.assertEqual(replies[5]["hint"], 'did you mean "name"?')
        self.assertEqual(replies[7]["ref"], "r")

    def test_graph_errors_carry_every_diagnostic_with_pointers(self):
        bad = graph(("a", "range", {"stop": 3}), ("b", "revers"), edges=[("a", "b"), ("a", "zz")])
        [reply] = self.exchange([{"op": "submit", "graph": bad}])
        self.assertEqual(reply["code"], "graph.unknown_coroutine")
        self.assertEqual(reply["pointer"], "/nodes/1/coroutine")
        self.assertIn('did you mean "reverse"', reply["hint"])
        pointers = [d["pointer"] for d in reply["diagnostics"]]
        self.assertIn("/edges/1/to", pointers)

    def test_graphs_over_the_node_limit_are_refused(self):
        big = graph(*[(f"n{i}", "identity") for i in range(9)])
        big["nodes"][0]["coroutine"] = "range"
        [reply] = self.exchange([{"op": "submit", "graph": big}])
        self.assertEqual((reply["code"], reply["pointer"]), ("graph.too_many_nodes", "/nodes"))

    def test_only_registered_code_and_no_files(self):
        replies = self.exchange([
            {"op": "submit", "graph": graph(("l", "lines", {"path": "/etc/passwd"}))},
            {"op": "submit", "graph": graph(("l", "jsonl"))},
            {"op": "submit", "graph": graph(("v", "values", {"values": [1]}), ("p", "print"),
                                            edges=[("v", "p")])},
            {"op": "submit", "graph": graph(("x", "/bin/sh"))},
            {"op": "submit", "graph": graph(("v", "values", {"values": [30]}),
                                            ("f", "fib", {}, {"threads": 200}), edges=[("v", "f")])},
        ])
        self.assertEqual([(r["code"], r.get("pointer")) for r in replies], [
            ("graph.file_not_allowed", "/nodes/0/params/path"),
            ("graph.file_not_allowed", "/nodes/0/params/path"),
            ("graph.not_allowed", "/nodes/1/coroutine"),
            ("graph.unknown_coroutine", "/nodes/0/coroutine"),
            ("graph.too_many_threads", "/nodes/1/threads"),
        ])
        self.assertIn("--allow-files", replies[0]["hint"])

    def test_run_limit_per_connection(self):
        async def go():
            async with connect(self.server) as ws:
                endless = graph(("n", "range", {"stop": 1000000000}), ("s", "sleep", {"ms": 50}),
                                edges=[("n", "s")])
                runs = [(await submit(ws, graph=endless))["run"] for _ in range(3)]
                refused = await submit(ws, graph=endless)
                self.assertEqual(refused["code"], "run.limit")
                for run in runs:
                    await send(ws, {"op": "cancel", "run": run})
                for run in runs:
                    await recv_until(ws, "done", run)
        run_async(go())

    def test_huge_frame_closes_with_1009_and_others_are_served(self):
        async def go():
            async with connect(self.server) as ws:
                await ws.send(json.dumps({"op": "input", "run": 1, "value": "x" * 70000}))
                with self.assertRaises(websockets.exceptions.ConnectionClosed) as closed:
                    await recv(ws)
                self.assertEqual(closed.exception.code, 1009)
            self.assertTrue(await served(self.server))
        run_async(go())

    def test_huge_http_body_is_413(self):
        status, headers, body = self.server.request("POST", "/v1/graphs/upper_input/process",
                                                    body="[" + "1," * 40000 + "1]")
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(body)["error"]["code"], "http.body_too_large")

    def test_garbage_http_is_400(self):
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=GUARD) as s:
            s.sendall(b"\x16\x03\x01 hello, not http\r\n\r\n")
            reply = s.recv(4096).decode(errors="replace")
        self.assertTrue(reply.startswith("HTTP/1.1 400"), reply)
        self.assertTrue(run_async(served(self.server)))


class Files(unittest.TestCase):
    def test_allow_files_limits_file_sources_to_one_directory(self):
        with tempfile.TemporaryDirectory() as root:
            allowed = os.path.join(root, "data")
            os.mkdir(allowed)
            with open(os.path.join(allowed, "words.txt"), "w") as f:
                f.write("alpha\nbeta\n")
            with open(os.path.join(root, "secret.txt"), "w") as f:
                f.write("secret\n")
            os.symlink(os.path.join(root, "secret.txt"), os.path.join(allowed, "link.txt"))
            with Server("--allow-files", allowed) as server:
                async def go():
                    async with connect(server) as ws:
                        ok = await submit(ws, graph=graph(("l", "lines", {"path": "words.txt"}),
                                                          ("u", "upper"), edges=[("l", "u")]))
                        self.assertEqual(ok["type"], "accepted", ok)
                        frames = await recv_until(ws, "done", ok["run"])
                        self.assertEqual([f["value"] for f in frames if f["type"] == "output"],
                                         ["ALPHA", "BETA"])
                        for path in ["../secret.txt", os.path.join(root, "secret.txt"), "link.txt", "-"]:
                            refused = await submit(ws, graph=graph(("l", "lines", {"path": path})))
                            self.assertEqual(refused["code"], "graph.file_not_allowed", path)
                run_async(go())


class Connections(unittest.TestCase):
    def test_thousands_of_idle_connections_and_a_limit(self):
        with Server("--max-connections", "1200") as server:
            async def go():
                idle_ws = [await connect(server) for _ in range(300)]
                raw = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(700)]
                try:
                    self.assertTrue(await served(server))
                    m = server.metrics()
                    self.assertGreaterEqual(metric(m, "plumber_connections_open"), 1000)
                    self.assertEqual(metric(m, "plumber_websockets"), 300)
                    extra = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(250)]
                    # Over the limit: a 503 with a JSON reason, then closed.
                    extra[-1].settimeout(GUARD)
                    reply = extra[-1].recv(4096).decode(errors="replace")
                    self.assertTrue(reply.startswith("HTTP/1.1 503"), reply)
                    self.assertIn("server.too_many_connections", reply)
                    for s in extra:
                        s.close()
                finally:
                    for s in raw:
                        s.close()
                    await asyncio.gather(*(ws.close() for ws in idle_ws))
                self.assertTrue(await served(server))
            run_async(go())

    def test_idle_http_connections_time_out(self):
        with Server("--idle-timeout", "1") as server:
            with socket.create_connection(("127.0.0.1", server.port), timeout=GUARD) as s:
                self.assertEqual(s.recv(1), b"")  # closed by the server, not by us

    def test_a_client_that_never_reads_holds_its_run_and_others_are_served(self):
        with Server("--max-send-queue", "65536", "--socket-send-buffer", "16384") as server:
            async def go():
                # No keepalive pings from this client: it reads nothing for a
                # while, so it could not see their answers (slow under TSan).
                async with connect_non_reader(server, ping_interval=None) as slow:
                    endless = graph(("n", "range", {"stop": 10 ** 12}), ("out", "identity"),
                                    edges=[("n", "out")], name="endless")
                    await send(slow, {"op": "submit", "graph": endless})
                    # Back pressure reaches the source: its count stops growing.
                    last = -1
                    for _ in range(int(GUARD / 0.25)):
                        await asyncio.sleep(0.25)
                        m = server.metrics()
                        now = metric(m, "plumber_node_sent_total", graph="inline:endless", node="n")
                        if now == last and now > 0:
                            break
                        last = now
                    self.assertEqual(now, last)
                    # Memory stayed bounded: never more than the limit was queued.
                    self.assertLessEqual(metric(m, "plumber_ws_send_queue_bytes"), 65536)
                    self.assertEqual(metric(m, "plumber_ws_closed_total", reason="send_queue_full"), 0)
                    self.assertTrue(await served(server))
                    # Reading at last, it gets every output, in order, none lost.
                    accepted = await recv(slow)
                    run = accepted["run"]
                    ids = [(await recv(slow))["id"] for _ in range(2000)]
                    self.assertEqual(ids, list(range(1, 2001)))
                    await send(slow, {"op": "cancel", "run": run})
                    frames = await recv_until(slow, "done", run)
                    self.assertEqual(frames[-1]["status"], "cancelled")
            run_async(go())

    def test_an_output_over_the_send_queue_limit_closes_with_a_reason(self):
        with Server("--max-send-queue", "65536") as server:
            async def go():
                async with connect(server) as ws:
                    big = graph(("v", "values", {"values": ["x" * 100000]}), ("out", "identity"),
                                edges=[("v", "out")])
                    await send(ws, {"op": "submit", "graph": big})
                    frames = []
                    with self.assertRaises(websockets.exceptions.ConnectionClosed) as closed:
                        while True:
                            frames.append(await recv(ws))
                    self.assertEqual(closed.exception.code, 1008)
                    errors = [f for f in frames if f["type"] == "error"]
                    self.assertEqual(errors[-1]["code"], "connection.send_queue_full")
                self.assertTrue(await served(server))
                m = server.metrics()
                self.assertEqual(metric(m, "plumber_ws_closed_total", reason="send_queue_full"), 1)
            run_async(go())


if __name__ == "__main__":
    main()
