"""SIGINT/SIGTERM: stop accepting, let runs finish within the grace period,
then cancel them, telling clients why."""
import asyncio
import signal
import socket
import unittest

import websockets

from harness import GUARD, UPPER, Server, connect, graph, main, recv, recv_until, run_async, send, submit

ENDLESS = graph(("n", "range", {"stop": 10 ** 12}), ("s", "sleep", {"ms": 2}), edges=[("n", "s")],
                name="endless")


async def wait_closed(ws):
    """Every frame until the server closes; returns (frames, close code, close reason)."""
    frames = []
    try:
        while True:
            frames.append(await recv(ws))
    except websockets.exceptions.ConnectionClosed as closed:
        return frames, closed.code, closed.reason


class Shutdown(unittest.TestCase):
    def test_runs_finish_within_the_grace_period(self):
        server = Server("--grace-ms", "60000").start()

        async def go():
            async with connect(server) as idle, connect(server) as ws:
                run = (await submit(ws, graph=UPPER))["run"]
                await send(ws, {"op": "input", "run": run, "value": "before"})
                await recv_until(ws, "output", run)
                server.signal(signal.SIGTERM)
                frame = await recv(ws)
                self.assertEqual(frame["type"], "shutdown")
                self.assertIn("SIGTERM", frame["reason"])
                self.assertEqual(frame["grace_ms"], 60000)
                # An idle connection is told and closed at once (1001 going away).
                frames, code, reason = await wait_closed(idle)
                self.assertEqual(frames[0]["type"], "shutdown")
                self.assertEqual(code, 1001)
                self.assertIn("SIGTERM", reason)
                # No new runs, and no new WebSocket sessions...
                refused = await submit(ws, graph=UPPER)
                self.assertEqual(refused["code"], "server.shutting_down")
                with self.assertRaises(websockets.exceptions.InvalidStatusCode) as late:
                    async with connect(server):
                        pass
                self.assertEqual(late.exception.status_code, 503)
                # ...but the running one takes input and finishes.
                await send(ws, {"op": "input", "run": run, "value": "after"})
                await send(ws, {"op": "end", "run": run})
                frames, code, reason = await wait_closed(ws)
                outputs = [f["value"] for f in frames if f["type"] == "output"]
                self.assertEqual(outputs, ["AFTER"])
                done = [f for f in frames if f["type"] == "done"]
                self.assertEqual(done[0]["status"], "completed")
                self.assertEqual(code, 1001)
        run_async(go())
        self.assertEqual(server.wait(), 0, server.stderr.decode(errors="replace"))
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()

    def test_runs_past_the_grace_period_are_cancelled_with_a_reason(self):
        server = Server("--grace-ms", "300").start()

        async def go():
            async with connect(server) as ws:
                run = (await submit(ws, graph=ENDLESS))["run"]
                await recv_until(ws, "output", run)
                server.signal(signal.SIGINT)
                frames, code, reason = await wait_closed(ws)
                kinds = [f["type"] for f in frames]
                self.assertIn("shutdown", kinds)
                done = [f for f in frames if f["type"] == "done"]
                self.assertEqual(len(done), 1)
                self.assertEqual(done[0]["status"], "cancelled")
                self.assertIn("grace period is over", done[0]["reason"])
                self.assertIn("SIGINT", done[0]["reason"])
                self.assertEqual(code, 1001)
        run_async(go())
        self.assertEqual(server.wait(), 0, server.stderr.decode(errors="replace"))

    def test_a_second_signal_cuts_the_grace_period_short(self):
        server = Server("--grace-ms", "600000").start()

        async def go():
            async with connect(server) as ws:
                run = (await submit(ws, graph=ENDLESS))["run"]
                await recv_until(ws, "output", run)
                server.signal(signal.SIGTERM)
                await recv_until(ws, "shutdown")
                status, body = server.get_json("/readyz")
                self.assertEqual((status, body["status"]), (503, "stopping"))
                self.assertEqual(server.get_json("/healthz")[0], 200)
                status, headers, body = server.request("POST", "/v1/graphs/upper_input/process",
                                                       body='"x"')
                self.assertEqual(status, 503)
                server.signal(signal.SIGTERM)
                frames, code, reason = await wait_closed(ws)
                done = [f for f in frames if f["type"] == "done"]
                self.assertEqual(done[0]["status"], "cancelled")
                self.assertIn("cut short", done[0]["reason"])
        run_async(go())
        self.assertEqual(server.wait(), 0, server.stderr.decode(errors="replace"))


if __name__ == "__main__":
    main()
