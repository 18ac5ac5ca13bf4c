"""The per-step limit of served runs (`--max-step-ms`, issue 12): a run with a
step invocation past the limit is cancelled with a reason naming the node; a
synchronous step that never returns loses its thread, and the server goes on
(other runs, /healthz, SIGTERM)."""
import time
import unittest

from harness import GUARD, Server, connect, graph, main, metric, recv_until, run_async, submit

LIMIT_MS = 2000  # far below what the steps below take, far above what a loaded machine adds
FIB70 = graph(("v", "values", {"values": [70]}), ("f", "fib"), ("out", "identity"),
              edges=[("v", "f"), ("f", "out")], name="fib70")
LONG_SLEEP = graph(("v", "values", {"values": [1, 2]}), ("s", "sleep", {"ms": 600000}),
                   ("out", "identity"), edges=[("v", "s"), ("s", "out")], name="long_sleep")
SHORT = graph(("v", "values", {"values": list(range(20))}), ("s", "sleep", {"ms": 1}),
              ("out", "identity"), edges=[("v", "s"), ("s", "out")], name="short")


def reason(node):
    return f'the step in node "{node}" ran longer than {LIMIT_MS} ms (--max-step-ms {LIMIT_MS})'


class StepLimit(unittest.TestCase):
    async def run_to_done(self, ws, doc):
        accepted = await submit(ws, graph=doc)
        self.assertEqual(accepted["type"], "accepted", accepted)
        return (await recv_until(ws, "done", accepted["run"]))[-1]

    def test_a_synchronous_step_past_the_limit_loses_its_thread_and_the_server_goes_on(self):
        # fib(70) would hold the only pipeline thread for hours: the run is
        # cancelled, another thread takes over the other runs, and SIGTERM ends
        # the server without waiting for the step.
        server = Server("--max-step-ms", str(LIMIT_MS), "--pipeline-threads", "1",
                        "--grace-ms", "200").start()
        try:
            async def go():
                async with connect(server) as ws:
                    done = await self.run_to_done(ws, FIB70)
                    self.assertEqual((done["status"], done["reason"]), ("cancelled", reason("f")))
                    status, _, _ = server.request("GET", "/healthz")
                    self.assertEqual(status, 200)
                    # The only pipeline thread still computes fib(70).
                    done = await self.run_to_done(ws, SHORT)
                    self.assertEqual((done["status"], done["outputs"]), ("completed", 20), done)
            run_async(go())
        finally:
            code = server.stop()
        self.assertEqual(code, 0, server.stderr.decode(errors="replace"))
        self.assertIn(b"still runs; exiting without it", server.stderr)

    def test_an_async_step_past_the_limit_is_cancelled_and_its_run_ends(self):
        with Server("--max-step-ms", str(LIMIT_MS), "--pipeline-threads", "2") as server:
            async def go():
                async with connect(server) as ws:
                    done = await self.run_to_done(ws, LONG_SLEEP)
                    self.assertEqual((done["status"], done["reason"]), ("cancelled", reason("s")))
                    self.assertEqual(done["cancelled"], 2, done)
                    # Steps under the limit are not affected.
                    done = await self.run_to_done(ws, SHORT)
                    self.assertEqual((done["status"], done["outputs"]), ("completed", 20), done)
            run_async(go())
            # The cancelled run really ended (its timer was interrupted), it was
            # not left behind.
            deadline = time.monotonic() + GUARD
            while metric(server.metrics(), "plumber_runs_active") != 0:
                self.assertLess(time.monotonic(), deadline, "the cancelled run never ended")
                time.sleep(0.05)

    def test_zero_means_no_limit(self):
        with Server("--max-step-ms", "0") as server:
            async def go():
                async with connect(server) as ws:
                    done = await self.run_to_done(ws, SHORT)
                    self.assertEqual(done["status"], "completed", done)
            run_async(go())


if __name__ == "__main__":
    main()
