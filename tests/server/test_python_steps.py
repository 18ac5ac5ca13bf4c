"""Python steps (`exec` + python/plumber_step) served by the real `plumber serve`
from a --graphs directory: answers through POST /v1/graphs/NAME/process, and an
auto-scaled pool of Python copies that grows under a burst and shrinks when idle
(observed through /metrics, never through timings)."""
import json
import os
import shutil
import tempfile
import threading
import time
import unittest

from harness import GUARD, SOURCE, Server, main, metric

PYTHON = "/usr/bin/python3"
KIT = os.path.join(SOURCE, "python")

SLOW_STEP = """import time
import plumber_step

@plumber_step.step
def handle(value):
    time.sleep(0.02)
    return value * 2
"""


def exec_node(script, procs):
    return {"id": "py", "coroutine": "exec", "procs": procs,
            "params": {"command": [PYTHON, script], "env": {"PYTHONPATH": KIT}}}


def write_graph(directory, name, node):
    doc = {"plumber": 1, "name": name,
           "nodes": [{"id": "in", "coroutine": "input"}, node],
           "edges": [{"from": "in", "to": "py"}]}
    with open(os.path.join(directory, name + ".json"), "w") as f:
        json.dump(doc, f)


def wait_for(condition, what):
    """Polls `condition` until it holds; fails after the hang guard."""
    deadline = time.monotonic() + GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("never happened: " + what)
        time.sleep(0.05)


class PythonStepsServed(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.graphs = tempfile.mkdtemp(prefix="plumber-python-")
        shutil.copytree(os.path.join(SOURCE, "graphs", "steps"), os.path.join(cls.graphs, "steps"))
        with open(os.path.join(cls.graphs, "slow.py"), "w") as f:
            f.write(SLOW_STEP)
        write_graph(cls.graphs, "py_sum", exec_node("steps/sum.py", 2))
        write_graph(cls.graphs, "py_scaled",
                    exec_node("slow.py", {"min": 1, "max": 2, "cooldown_ms": 50,
                                          "scale_down_after_ms": 300}))
        cls.server = Server(graphs=cls.graphs).start()

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        shutil.rmtree(cls.graphs)
        assert code == 0, cls.server.stderr.decode(errors="replace")

    def post(self, name, value):
        status, _, body = self.server.request("POST", f"/v1/graphs/{name}/process",
                                              body=json.dumps(value),
                                              headers={"Content-Type": "application/json"})
        return status, json.loads(body)

    def post_concurrently(self, name, values):
        results = {}

        def one(v):
            results[v] = self.post(name, v)
        threads = [threading.Thread(target=one, args=(v,)) for v in values]
        for t in threads:
            t.start()
        for t in threads:
            t.join(GUARD)
        return results

    def test_a_python_step_answers_requests(self):
        self.assertEqual(self.post("py_sum", 7), (200, {"n": 7, "sum": 91}))
        results = self.post_concurrently("py_sum", range(30))
        self.assertEqual(results, {n: (200, {"n": n, "sum": sum(i * i for i in range(n))})
                                   for n in range(30)})
        # A value the step cannot take is an error naming the node, and the copies go on.
        status, body = self.post("py_sum", "seven")
        self.assertEqual((status, body["error"]["code"], body["error"]["node"]),
                         (422, "process.step_failed", "py"))
        self.assertEqual(self.post("py_sum", 3), (200, {"n": 3, "sum": 5}))

    def test_a_burst_grows_the_pool_and_idleness_shrinks_it(self):
        def pool():
            m = self.server.metrics()
            return (metric(m, "plumber_worker_pool_size", graph="py_scaled", node="py"),
                    metric(m, "plumber_worker_scale_events_total", graph="py_scaled", node="py",
                           direction="up"),
                    metric(m, "plumber_worker_scale_events_total", graph="py_scaled", node="py",
                           direction="down"))
        self.assertEqual(self.post("py_scaled", 1), (200, 2))  # the pipeline exists now
        self.assertEqual(pool(), (1, 0, 0))
        results = self.post_concurrently("py_scaled", range(200))
        self.assertEqual(results, {v: (200, 2 * v) for v in range(200)})
        _, ups, _ = pool()
        self.assertEqual(ups, 1, "the pool grew once, to its max")
        wait_for(lambda: pool() == (1, 1, 1), "the idle pool going back to min")


if __name__ == "__main__":
    main()
