"""Graphs managed at run time: --graphs is reloaded on SIGHUP and watched with
inotify; a changed file is validated before its /v1 pipeline is swapped (values
in flight finish on the old one); a broken file keeps the old version serving;
--allow-edits takes PUT and DELETE /v1/graphs/NAME. All over HTTP.

Every wait here polls for a state the server reports (its /v1/graphs versions,
its metrics); GUARD only stops a hang."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

from harness import GUARD, PLUMBER, Server, graph, main, metric

SLOW_LOWER = graph(("in", "input"), ("slow", "sleep", {"ms": 6000}), ("low", "lower"),
                   edges=[("in", "slow"), ("slow", "low")], name="echo")
UPPER = graph(("in", "input"), ("up", "upper"), edges=[("in", "up")], name="echo")
BROKEN = graph(("in", "input"), ("up", "uper"), edges=[("in", "up")], name="echo")


def write(directory, name, document):
    """Writes a graph file as an editor would: a temporary file renamed over it."""
    path = os.path.join(directory, name + ".json")
    temporary = os.path.join(directory, "." + name + ".swp")
    with open(temporary, "w") as f:
        f.write(document if isinstance(document, str) else json.dumps(document, indent=2))
    os.replace(temporary, path)


def wait_for(condition, what):
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("gave up waiting for " + what)


class Reload(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="plumber-reload-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def version(self, server, name):
        status, body = server.get_json("/v1/graphs")
        self.assertEqual(status, 200)
        return {g["name"]: g["version"] for g in body["graphs"]}.get(name)

    def process(self, server, value, name="echo"):
        status, headers, body = server.request("POST", f"/v1/graphs/{name}/process", body=json.dumps(value))
        return status, json.loads(body)

    def test_sighup_swaps_the_pipeline_while_a_value_in_flight_finishes_on_the_old_one(self):
        write(self.dir, "echo", SLOW_LOWER)
        with Server("--no-watch", graphs=self.dir) as server:
            self.assertEqual(self.version(server, "echo"), 1)
            first = {}
            request = threading.Thread(target=lambda: first.update(answer=self.process(server, "In Flight")))
            request.start()
            # The value is inside the old graph (received by its sleep step).
            wait_for(lambda: metric(server.metrics(), "plumber_node_received_total",
                                    graph="echo", node="slow") >= 1, "the value to reach the sleep step")
            write(self.dir, "echo", UPPER)
            server.signal(signal.SIGHUP)
            wait_for(lambda: self.version(server, "echo") == 2, "version 2")
            self.assertNotIn("answer", first, "the old pipeline answered before the swap: no value was in flight")
            # New requests go to the new version...
            self.assertEqual(self.process(server, "New One"), (200, "NEW ONE"))
            # ... and the one in flight completes on the old one.
            request.join(GUARD)
            self.assertEqual(first["answer"], (200, "in flight"))
            samples = server.metrics()
            self.assertEqual(metric(samples, "plumber_catalog_graph_version", graph="echo"), 2)
            self.assertEqual(metric(samples, "plumber_catalog_graph_valid", graph="echo"), 1)
            self.assertEqual(metric(samples, "plumber_catalog_reloads_total", result="applied"), 1)
        self.assertIn("version 2 replaces version 1", server.stderr.decode())

    def test_a_broken_edit_keeps_the_old_version_serving(self):
        write(self.dir, "echo", UPPER)
        with Server("--no-watch", graphs=self.dir) as server:
            self.assertEqual(self.process(server, "a"), (200, "A"))
            write(self.dir, "echo", BROKEN)
            server.signal(signal.SIGHUP)
            wait_for(lambda: metric(server.metrics(), "plumber_catalog_reloads_total", result="rejected") == 1,
                     "the broken file to be rejected")
            samples = server.metrics()
            self.assertEqual(metric(samples, "plumber_catalog_graph_valid", graph="echo"), 0)
            self.assertEqual(metric(samples, "plumber_catalog_graph_version", graph="echo"), 1)
            self.assertEqual(self.version(server, "echo"), 1)
            self.assertEqual(self.process(server, "still served"), (200, "STILL SERVED"))
            # Half-written JSON is refused the same way.
            write(self.dir, "echo", '{"plumber": 1, "nodes": [')
            server.signal(signal.SIGHUP)
            wait_for(lambda: metric(server.metrics(), "plumber_catalog_reloads_total", result="rejected") == 2,
                     "the truncated file to be rejected")
            self.assertEqual(self.process(server, "b"), (200, "B"))
            # Put back as it was: valid again, same version.
            write(self.dir, "echo", UPPER)
            server.signal(signal.SIGHUP)
            wait_for(lambda: metric(server.metrics(), "plumber_catalog_graph_valid", graph="echo") == 1,
                     "the file to be valid again")
            self.assertEqual(self.version(server, "echo"), 1)
        log = server.stderr.decode()
        self.assertIn('unknown coroutine "uper"', log)
        self.assertIn("version 1 keeps serving", log)

    def test_inotify_sees_new_changed_and_removed_files(self):
        write(self.dir, "echo", UPPER)
        with Server(graphs=self.dir) as server:
            write(self.dir, "added", graph(("in", "input"), ("low", "lower"), edges=[("in", "low")], name="added"))
            wait_for(lambda: self.version(server, "added") == 1, "the new file to be loaded")
            self.assertEqual(self.process(server, "ADDED", name="added"), (200, "added"))
            write(self.dir, "echo", graph(("in", "input"), ("rev", "reverse"), edges=[("in", "rev")], name="echo"))
            wait_for(lambda: self.version(server, "echo") == 2, "the changed file to be loaded")
            self.assertEqual(self.process(server, "abc"), (200, "cba"))
            os.remove(os.path.join(self.dir, "added.json"))
            wait_for(lambda: self.version(server, "added") is None, "the removed file to be forgotten")
            status, body = self.process(server, "x", name="added")
            self.assertEqual((status, body["error"]["code"]), (404, "graph.unknown_name"))

    def test_put_and_delete_with_allow_edits(self):
        write(self.dir, "echo", UPPER)
        with Server("--allow-edits", graphs=self.dir) as server:
            doc = graph(("in", "input"), ("rev", "reverse"), edges=[("in", "rev")], name="made")
            status, headers, body = server.request("PUT", "/v1/graphs/made", body=doc)
            self.assertEqual(status, 201, body)
            self.assertEqual(json.loads(body)["version"], 1)
            self.assertTrue(os.path.exists(os.path.join(self.dir, "made.json")))
            self.assertEqual(self.process(server, "abc", name="made"), (200, "cba"))
            # Replaced: version 2, served at once.
            status, headers, body = server.request("PUT", "/v1/graphs/made", body=UPPER)
            self.assertEqual((status, json.loads(body)["version"]), (200, 2))
            self.assertEqual(self.process(server, "abc", name="made"), (200, "ABC"))
            # An invalid graph is refused with the diagnostics of `plumber validate`; nothing is written.
            status, headers, body = server.request("PUT", "/v1/graphs/made", body=BROKEN)
            error = json.loads(body)["error"]
            self.assertEqual((status, error["code"]), (422, "graph.unknown_coroutine"))
            self.assertEqual(error["diagnostics"][0]["pointer"], "/nodes/1/coroutine")
            with open(os.path.join(self.dir, "made.json")) as f:
                self.assertEqual(json.load(f)["nodes"][1]["coroutine"], "upper")
            self.assertEqual([f for f in os.listdir(self.dir) if f.startswith(".")], [])
            status, headers, body = server.request("DELETE", "/v1/graphs/made")
            self.assertEqual(status, 200, body)
            self.assertFalse(os.path.exists(os.path.join(self.dir, "made.json")))
            self.assertEqual(self.process(server, "abc", name="made")[0], 404)
            self.assertEqual(server.request("DELETE", "/v1/graphs/made")[0], 404)
            self.assertEqual(server.request("PUT", "/v1/graphs/.hidden", body=UPPER)[0], 400)

    def test_edits_are_refused_by_default_and_need_a_token_beyond_loopback(self):
        write(self.dir, "echo", UPPER)
        with Server(graphs=self.dir) as server:
            status, headers, body = server.request("PUT", "/v1/graphs/echo", body=UPPER)
            self.assertEqual((status, json.loads(body)["error"]["code"]), (403, "graph.edits_not_allowed"))
            self.assertEqual(server.request("DELETE", "/v1/graphs/echo")[0], 403)
            self.assertTrue(os.path.exists(os.path.join(self.dir, "echo.json")))
            status, body = server.get_json("/v1/graphs")
            self.assertFalse(body["edits"])
        refused = subprocess.run([PLUMBER, "serve", "--port", "0", "--bind", "0.0.0.0", "--graphs", self.dir,
                                  "--allow-edits"], capture_output=True, timeout=GUARD)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("needs --token", refused.stderr.decode())


if __name__ == "__main__":
    main()
