"""Cancellation across threads (issue 12): runs cancelled at once on several
pipeline threads all end with their `done`; a run cancelled while its `threads`
step runs on the node's thread pool ends, and the server goes on."""
import asyncio
import unittest

from harness import GUARD, Server, connect, graph, main, recv, run_async, send, submit

# Endless, and never idle: the source always has a message waiting for the sleep.
ENDLESS_SLEEP = graph(("n", "range", {"stop": 10 ** 12}), ("s", "sleep", {"ms": 50}),
                      ("out", "identity"), edges=[("n", "s"), ("s", "out")], name="endless_sleep")
# A step on a thread pool of two: while one pool thread computes, the other
# takes the cancellation.
POOLED = graph(("n", "range", {"stop": 10 ** 12}), ("q", "sum_squares", {}, {"threads": 2}),
               ("out", "identity"), edges=[("n", "q"), ("q", "out")], name="pooled")
ITERATIONS = 20
POOLED_ITERATIONS = 50  # the old crash came in 2 of 3 runs of 20 iterations


class Cancel(unittest.TestCase):
    def test_runs_cancelled_at_once_on_two_pipeline_threads_all_end(self):
        # A cancelled run's `done` sometimes never came with two pipeline threads
        # (6 times in 10 with three runs cancelled at once on one connection).
        with Server("--pipeline-threads", "2", "--max-runs", "3") as server:
            async def once(iteration):
                async with connect(server) as ws:
                    runs = []
                    for _ in range(3):
                        # A ref: outputs of the runs already going may come before this accepted.
                        accepted = await submit(ws, graph=ENDLESS_SLEEP, ref=len(runs) + 1)
                        self.assertEqual(accepted["type"], "accepted", accepted)
                        runs.append(accepted["run"])
                    for run in runs:
                        await send(ws, {"op": "cancel", "run": run})
                    done = {}
                    while len(done) < len(runs):
                        try:
                            frame = await recv(ws, GUARD / 3)
                        except asyncio.TimeoutError:
                            self.fail(f"iteration {iteration}: no done for runs "
                                      f"{sorted(set(runs) - set(done))}")
                        if frame["type"] == "done":
                            done[frame["run"]] = frame
                        else:
                            self.assertIn(frame["type"], ("output", "failed"), frame)
                    for run in runs:
                        self.assertEqual(done[run]["status"], "cancelled", done[run])
                        self.assertEqual(done[run]["reason"], "cancelled by the client")

            async def go():
                for iteration in range(ITERATIONS):
                    await once(iteration)
            run_async(go(), guard=GUARD * ITERATIONS)

    def test_a_run_cancelled_while_its_pooled_step_runs_ends_and_the_server_goes_on(self):
        # The cancellation reached the pool thread while the step ran, and Asio
        # 1.81's co_spawn threw from its last step there: std::terminate, the
        # whole server gone.
        with Server("--pipeline-threads", "2") as server:
            async def once(iteration):
                async with connect(server) as ws:
                    accepted = await submit(ws, graph=POOLED)
                    self.assertEqual(accepted["type"], "accepted", accepted)
                    outputs = 0
                    while outputs < 20:  # the pool is busy
                        frame = await recv(ws)
                        self.assertEqual(frame["type"], "output", frame)
                        outputs += 1
                    await send(ws, {"op": "cancel", "run": accepted["run"]})
                    while True:
                        frame = await recv(ws)
                        if frame["type"] == "done":
                            break
                        self.assertIn(frame["type"], ("output", "failed"), frame)
                    self.assertEqual(frame["status"], "cancelled", frame)
                status, _, _ = server.request("GET", "/healthz")
                self.assertEqual(status, 200, f"iteration {iteration}")

            async def go():
                for iteration in range(POOLED_ITERATIONS):
                    await once(iteration)
            run_async(go(), guard=GUARD * POOLED_ITERATIONS)


if __name__ == "__main__":
    main()
