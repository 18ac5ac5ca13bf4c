"""HTTP endpoints of the real server: health, readiness, metrics, graphs, auth."""
import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import threading
import unittest

import websockets

from harness import (GRAPHS, UPPER, Server, connect, graph, main, metric, recv_until, run_async,
                     send, submit)

TOKEN = "s3cret-token"


class Http(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server().start()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.stderr.decode(errors="replace")

    def test_health_and_readiness(self):
        self.assertEqual(self.server.get_json("/healthz"), (200, {"status": "ok"}))
        self.assertEqual(self.server.get_json("/readyz"), (200, {"status": "ready"}))

    def test_page_is_served_by_the_binary(self):
        status, headers, body = self.server.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/html"))
        page = body.decode()
        self.assertIn("<svg id=\"graph-view\"", page)
        self.assertNotIn("http://", page.replace("http://www.w3.org", ""))  # no CDN
        self.assertNotIn("https://", page)

    def test_graphs_list_and_document(self):
        status, body = self.server.get_json("/v1/graphs")
        self.assertEqual(status, 200)
        names = [g["name"] for g in body["graphs"]]
        self.assertIn("strings", names)
        upper = next(g for g in body["graphs"] if g["name"] == "upper_input")
        self.assertTrue(upper["input"])
        self.assertTrue(upper["process"])
        self.assertEqual(upper["order"], ["in", "up", "out"])
        status, document = self.server.get_json("/v1/graphs/strings")
        self.assertEqual(status, 200)
        self.assertEqual(document["name"], "strings")
        status, error = self.server.get_json("/v1/graphs/nope")
        self.assertEqual(status, 404)
        self.assertEqual(error["error"]["code"], "graph.unknown_name")

    def test_errors_are_json_with_codes(self):
        status, headers, body = self.server.request("GET", "/nothing")
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(body)["error"]["code"], "http.not_found")
        status, headers, body = self.server.request("DELETE", "/healthz")
        self.assertEqual(status, 405)
        self.assertEqual(headers["allow"], "GET")
        status, headers, body = self.server.request("GET", "/ws")
        self.assertEqual(status, 426)
        self.assertEqual(json.loads(body)["error"]["code"], "http.upgrade_required")
        status, headers, body = self.server.request("POST", "/v1/graphs/strings/process", body="1")
        self.assertEqual(status, 409)
        self.assertEqual(json.loads(body)["error"]["code"], "graph.no_input")

    def test_metrics_parse_and_count_runs_and_nodes(self):
        async def go():
            async with connect(self.server) as ws:
                run = (await submit(ws, graph=UPPER))["run"]
                await send(ws, {"op": "input", "run": run, "values": ["a", "b", 3]})
                await send(ws, {"op": "end", "run": run})
                await recv_until(ws, "done", run)
                await send(ws, {"op": "bogus"})
                await ws.recv()
                m = self.server.metrics()
                self.assertEqual(metric(m, "plumber_websockets"), 1)
                self.assertGreaterEqual(metric(m, "plumber_connections_open"), 1)
                return m
        before = self.server.metrics()
        m = run_async(go())
        types = m["types"]
        for family, kind in [("plumber_node_received_total", "counter"),
                             ("plumber_node_sent_total", "counter"),
                             ("plumber_node_errors_total", "counter"),
                             ("plumber_node_queue_depth", "gauge"),
                             ("plumber_node_processing_seconds", "histogram"),
                             ("plumber_node_wait_seconds", "histogram"),
                             ("plumber_node_batch_size", "histogram"),
                             ("plumber_node_expired_total", "counter"),
                             ("plumber_node_retried_total", "counter"),
                             ("plumber_node_cancelled_total", "counter"),
                             ("plumber_node_in_per_second", "gauge"),
                             ("plumber_node_out_per_second", "gauge"),
                             ("plumber_worker_restarts_total", "counter"),
                             ("plumber_connections_open", "gauge"),
                             ("plumber_runs_active", "gauge"),
                             ("plumber_runs_total", "counter"),
                             ("plumber_process_seconds", "histogram")]:
            self.assertEqual(types.get(family), kind, family)

        def delta(name, **labels):
            return metric(m, name, **labels) - metric(before, name, **labels)
        self.assertEqual(delta("plumber_node_received_total", graph="inline:upper", node="up"), 3)
        self.assertEqual(delta("plumber_node_sent_total", graph="inline:upper", node="out"), 2)
        self.assertEqual(delta("plumber_node_errors_total", graph="inline:upper", node="up"), 1)
        self.assertEqual(delta("plumber_runs_total", status="completed"), 1)
        self.assertEqual(delta("plumber_ws_errors_total", code="protocol.unknown_op"), 1)
        self.assertGreaterEqual(
            delta("plumber_node_processing_seconds_count", graph="inline:upper", node="up"), 3)
        # Unbatched: every call of "up" is in the batch-size bucket 1, and holds one message.
        calls = delta("plumber_node_batch_size_count", graph="inline:upper", node="up")
        self.assertGreaterEqual(calls, 3)
        self.assertEqual(delta("plumber_node_batch_size_bucket", graph="inline:upper", node="up",
                               le="1"), calls)
        self.assertEqual(delta("plumber_node_batch_size_sum", graph="inline:upper", node="up"),
                         calls)
        self.assertEqual(metric(m, "plumber_node_processing_seconds_bucket", graph="inline:upper",
                                node="up", le="+Inf"),
                         metric(m, "plumber_node_processing_seconds_count", graph="inline:upper",
                                node="up"))


class Token(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--token", TOKEN).start()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.stderr.decode(errors="replace")

    def test_every_endpoint_but_healthz_needs_the_token(self):
        self.assertEqual(self.server.request("GET", "/healthz")[0], 200)
        for path in ["/", "/readyz", "/metrics", "/v1/graphs", "/v1/graphs/strings"]:
            status, headers, body = self.server.request("GET", path)
            self.assertEqual(status, 401, path)
            self.assertEqual(headers["www-authenticate"], "Bearer")
            self.assertEqual(json.loads(body)["error"]["code"], "http.unauthorized")
            self.assertEqual(self.server.request(
                "GET", path, headers={"Authorization": "Bearer wrong"})[0], 401)
            self.assertEqual(self.server.request(
                "GET", path, headers={"Authorization": f"Bearer {TOKEN}"})[0], 200, path)
            self.assertEqual(self.server.request("GET", f"{path}?token={TOKEN}")[0], 200, path)

    def test_websocket_needs_the_token(self):
        async def go():
            with self.assertRaises(websockets.exceptions.InvalidStatusCode) as refused:
                async with connect(self.server):
                    pass
            self.assertEqual(refused.exception.status_code, 401)
            async with connect(self.server, extra_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                self.assertEqual((await submit(ws, name="strings"))["type"], "accepted")
            async with connect(self.server, path=f"/ws?token={TOKEN}") as ws:
                self.assertEqual((await submit(ws, name="strings"))["type"], "accepted")
        run_async(go())

    def test_cross_origin_websocket_is_refused(self):
        async def go():
            with self.assertRaises(websockets.exceptions.InvalidStatusCode) as refused:
                async with connect(self.server, path=f"/ws?token={TOKEN}",
                                   origin="http://evil.example"):
                    pass
            self.assertEqual(refused.exception.status_code, 403)
            same = f"http://127.0.0.1:{self.server.port}"
            async with connect(self.server, path=f"/ws?token={TOKEN}", origin=same) as ws:
                self.assertEqual((await submit(ws, name="strings"))["type"], "accepted")
        run_async(go())


class Process(unittest.TestCase):
    """POST /v1/graphs/NAME/process: one long-lived pipeline per graph, shared by all requests."""

    @classmethod
    def setUpClass(cls):
        cls.graphs = tempfile.mkdtemp(prefix="plumber-process-")
        shutil.copy(os.path.join(GRAPHS, "upper_input.json"), cls.graphs)
        docs = {
            "slow": graph(("in", "input"), ("s", "sleep", {"ms": 3000}, {"concurrency": 64}),
                          edges=[("in", "s")]),
            "fanout": graph(("in", "input"), ("a", "upper"), ("b", "reverse"),
                            edges=[("in", "a"), ("in", "b")]),
            "source": graph(("n", "range", {"stop": 3}), ("out", "identity"), edges=[("n", "out")]),
            "blob": graph(("in", "input"), ("b", "to_blob"), edges=[("in", "b")]),
        }
        for name, doc in docs.items():
            doc["name"] = name
            with open(os.path.join(cls.graphs, name + ".json"), "w") as f:
                json.dump(doc, f)
        cls.server = Server(graphs=cls.graphs).start()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.stderr.decode(errors="replace")
        shutil.rmtree(cls.graphs)

    def post(self, name, body, query=""):
        status, headers, raw = self.server.request("POST", f"/v1/graphs/{name}/process{query}",
                                                   body=body,
                                                   headers={"Content-Type": "application/json"})
        return status, json.loads(raw)

    def test_value_in_result_out(self):
        self.assertEqual(self.post("upper_input", '"hello"'), (200, "HELLO"))
        status, body = self.post("fanout", '"abc"')
        self.assertEqual(status, 200)
        self.assertEqual(sorted(body), ["ABC", "cba"])

    def test_binary_results_as_the_body_or_described(self):
        text = "héllo, blob"
        digest = hashlib.sha256(text.encode()).hexdigest()
        # Asked for its type: the blob's bytes are the body.
        status, headers, raw = self.server.request(
            "POST", "/v1/graphs/blob/process", body=json.dumps(text),
            headers={"Content-Type": "application/json", "Accept": "text/plain"})
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(raw, text.encode())
        # Otherwise JSON: the value, and the blob's size and digest (never dropped unseen).
        status, body = self.post("blob", json.dumps(text))
        self.assertEqual(status, 200)
        self.assertEqual(body["value"], {"content_type": "text/plain; charset=utf-8",
                                         "size": len(text.encode())})
        self.assertEqual(body["blobs"], [{"size": len(text.encode()), "sha256": digest}])

    def test_output_frames_describe_blobs(self):
        async def go():
            async with connect(self.server) as ws:
                run = (await submit(ws, graph=graph(("in", "input"), ("b", "to_blob"),
                                                    edges=[("in", "b")], name="blobs")))["run"]
                await send(ws, {"op": "input", "run": run, "values": ["abc"]})
                await send(ws, {"op": "end", "run": run})
                return [f for f in await recv_until(ws, "done", run) if f.get("type") == "output"]
        outputs = run_async(go())
        self.assertEqual(len(outputs), 1)
        self.assertEqual(outputs[0]["blobs"],
                         [{"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}])

    def test_error_statuses(self):
        status, body = self.post("upper_input", "42")
        self.assertEqual(status, 422)
        self.assertEqual(body["error"]["code"], "process.step_failed")
        self.assertEqual(body["error"]["node"], "up")
        status, body = self.post("upper_input", "{not json")
        self.assertEqual((status, body["error"]["code"]), (400, "http.bad_request"))
        status, body = self.post("upper_input", '"x"', "?priority=999")
        self.assertEqual(status, 400)
        status, body = self.post("nope", '"x"')
        self.assertEqual((status, body["error"]["code"]), (404, "graph.unknown_name"))
        status, body = self.post("source", '"x"')
        self.assertEqual((status, body["error"]["code"]), (409, "graph.no_input"))
        status, body = self.post("slow", '"x"', "?timeout_ms=50")
        self.assertEqual((status, body["error"]["code"]), (504, "process.timed_out"))

    def test_concurrent_requests_share_one_pipeline(self):
        results = {}

        def call(k):
            results[k] = self.post("upper_input", json.dumps(f"word{k}"))

        threads = [threading.Thread(target=call, args=(k,)) for k in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, {k: (200, f"WORD{k}") for k in range(50)})
        m = self.server.metrics()
        self.assertGreaterEqual(metric(m, "plumber_process_requests_total", graph="upper_input",
                                       code="200"), 50)
        self.assertGreaterEqual(metric(m, "plumber_process_seconds_count", graph="upper_input"), 50)
        self.assertGreaterEqual(metric(m, "plumber_node_received_total", graph="upper_input",
                                       node="up"), 50)


if __name__ == "__main__":
    main()
