"""Binary bodies of POST /v1/graphs/NAME/process: read straight into shared memory,
hashed in a worker process with no copy, limits, short bodies, JSON bodies unchanged."""
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import unittest

from harness import GUARD, Server, graph, main, metric

LIMIT = 16 << 20  # --max-upload-bytes of the server under test


def raw_exchange(port, data, read_until_close=True):
    """Sends `data` on a new connection, shuts down sending, returns what the server sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        received = b""
        while read_until_close:
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def status_of(response):
    return int(response.split(b" ", 2)[1])


def json_body(response):
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


class Upload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.graphs = tempfile.mkdtemp(prefix="plumber-upload-")
        docs = {
            "sha_worker": graph(("in", "input"), ("sha", "sha256", None, {"procs": 1}),
                                edges=[("in", "sha")]),
            "echo": graph(("in", "input"), ("out", "identity"), edges=[("in", "out")]),
        }
        for name, doc in docs.items():
            doc["name"] = name
            with open(os.path.join(cls.graphs, name + ".json"), "w") as f:
                json.dump(doc, f)
        cls.server = Server("--max-upload-bytes", str(LIMIT), graphs=cls.graphs).start()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.stderr.decode(errors="replace")
        shutil.rmtree(cls.graphs)

    def upload(self, name, data, content_type="application/octet-stream", **headers):
        headers["Content-Type"] = content_type
        return self.server.request("POST", f"/v1/graphs/{name}/process", body=data,
                                   headers=headers)

    def eventually(self, probe, what):
        """Polls until `probe()` returns something true, and returns it (GUARD is a
        hang guard only)."""
        deadline = time.monotonic() + GUARD
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                self.fail(f"{what}: not seen in {GUARD} s")
            time.sleep(0.05)

    def wait_for(self, condition, what):
        """The metrics once `condition(metrics)` holds."""
        def probe():
            metrics = self.server.metrics()
            return metrics if condition(metrics) else None
        return self.eventually(probe, what)

    def test_10_mib_hashed_in_a_worker_without_a_copy(self):
        data = os.urandom(10 << 20)
        digest = hashlib.sha256(data).hexdigest()
        before = self.server.metrics()
        status, headers, raw = self.upload("sha_worker", data)
        self.assertEqual(status, 200, raw)
        reply = json.loads(raw)
        self.assertEqual(reply["value"], digest)
        self.assertEqual(reply["blobs"], [{"size": len(data), "sha256": digest}])
        after = self.wait_for(lambda m: metric(m, "plumber_upload_bytes_held") == 0,
                              "the upload's blob freed")

        def grew(name, **labels):
            return metric(after, name, **labels) - metric(before, name, **labels)

        pool = {"graph": "sha_worker", "node": "sha"}
        # Not one byte copied on its way into the worker and back...
        self.assertEqual(grew("plumber_worker_blob_bytes_copied_total", **pool), 0)
        self.assertGreaterEqual(grew("plumber_worker_blob_bytes_shared_total", **pool), len(data))
        # ...and from the socket, only what came in with the header went through
        # the connection's buffer (one read of at most 64 KiB); the rest was read
        # by the socket straight into shared memory.
        self.assertEqual(grew("plumber_upload_bytes_total"), len(data))
        self.assertLessEqual(grew("plumber_upload_bytes_copied_total"), 64 * 1024)
        self.assertEqual(grew("plumber_uploads_total", result="complete"), 1)

    def test_the_blob_comes_back_as_the_body_when_asked_for(self):
        data = bytes(range(256)) * 1000
        status, headers, raw = self.upload("echo", data, "image/png", Accept="image/png")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "image/png")
        self.assertEqual(raw, data)
        # Otherwise JSON: the value the graph got, and the blob described.
        status, headers, raw = self.upload("echo", data, "image/png")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(raw), {
            "value": {"content_type": "image/png", "size": len(data)},
            "blobs": [{"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]})
        # An empty body is an empty blob.
        status, headers, raw = self.upload("echo", b"", "text/plain")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(raw)["value"], {"content_type": "text/plain", "size": 0})

    def test_over_the_limit_gets_413_and_the_server_goes_on(self):
        status, headers, raw = self.upload("sha_worker", b"\0" * (LIMIT + 1))
        self.assertEqual(status, 413)
        error = json.loads(raw)["error"]
        self.assertEqual(error["code"], "http.body_too_large")
        self.assertEqual(error["message"],
                         f"the body is {LIMIT + 1} bytes, over the limit of {LIMIT} bytes for a "
                         "binary body (plumber serve's --max-upload-bytes)")
        # A client that waits for 100 Continue is refused before it sends anything.
        response = raw_exchange(self.server.port, (
            "POST /v1/graphs/sha_worker/process HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/octet-stream\r\nExpect: 100-continue\r\n"
            f"Content-Length: {1 << 40}\r\n\r\n").encode())
        self.assertEqual(status_of(response), 413)
        self.assertEqual(json_body(response)["error"]["code"], "http.body_too_large")
        # Others are served.
        data = b"still here"
        status, _, raw = self.upload("sha_worker", data)
        self.assertEqual((status, json.loads(raw)["value"]), (200, hashlib.sha256(data).hexdigest()))
        self.assertEqual(self.server.get_json("/healthz"), (200, {"status": "ok"}))

    def test_expect_100_continue(self):
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=GUARD) as s:
            s.sendall(b"POST /v1/graphs/sha_worker/process HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/octet-stream\r\nExpect: 100-continue\r\n"
                      b"Content-Length: 5\r\nConnection: close\r\n\r\n")
            interim = b""
            while b"\r\n\r\n" not in interim:
                chunk = s.recv(1)
                self.assertTrue(chunk, interim)
                interim += chunk
            self.assertEqual(interim, b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(b"hello")
            response = b""
            while chunk := s.recv(65536):
                response += chunk
        self.assertEqual(status_of(response), 200)
        self.assertEqual(json_body(response)["value"], hashlib.sha256(b"hello").hexdigest())

    def test_short_body_is_dropped_and_its_memory_freed(self):
        before = self.server.metrics()
        # Content-Length says 4 MiB; 1000 bytes come, then the client closes.
        response = raw_exchange(self.server.port, (
            "POST /v1/graphs/sha_worker/process HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {4 << 20}\r\n\r\n"
        ).encode() + b"x" * 1000)
        self.assertEqual(response, b"")  # nothing to answer: the request never ended
        incomplete = metric(before, "plumber_uploads_total", result="incomplete") + 1
        self.wait_for(lambda m: metric(m, "plumber_uploads_total", result="incomplete") == incomplete
                      and metric(m, "plumber_upload_bytes_held") == 0,
                      "the short upload counted and its blob freed")
        self.eventually(lambda: b"the body ended after 1000 of 4194304 bytes" in self.server.stderr,
                        "the short upload in the log")
        data = os.urandom(1 << 20)
        status, _, raw = self.upload("sha_worker", data)
        self.assertEqual((status, json.loads(raw)["value"]), (200, hashlib.sha256(data).hexdigest()))

    def test_chunked_body_gets_411(self):
        response = raw_exchange(self.server.port, (
            b"POST /v1/graphs/echo/process HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nab\r\n0\r\n\r\n"))
        self.assertEqual(status_of(response), 411)
        self.assertEqual(json_body(response)["error"]["code"], "http.length_required")

    def test_refusals_before_the_body(self):
        status, _, raw = self.upload("nothing_here", b"abc")
        self.assertEqual((status, json.loads(raw)["error"]["code"]), (404, "graph.unknown_name"))
        status, _, raw = self.server.request("POST", "/v1/graphs/echo/process?timeout_ms=x",
                                             body=b"abc",
                                             headers={"Content-Type": "application/octet-stream"})
        self.assertEqual((status, json.loads(raw)["error"]["code"]), (400, "http.bad_request"))

    def test_json_bodies_keep_their_path_and_limit(self):
        for content_type in ("application/json", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            status, _, raw = self.server.request("POST", "/v1/graphs/echo/process", body='"hi"',
                                                 headers=headers)
            self.assertEqual((status, json.loads(raw)), (200, "hi"), content_type)
        status, _, raw = self.server.request("POST", "/v1/graphs/echo/process",
                                             body=json.dumps("x" * (1 << 20)),
                                             headers={"Content-Type": "application/json"})
        self.assertEqual(status, 413)
        self.assertIn("--max-frame", json.loads(raw)["error"]["message"])


if __name__ == "__main__":
    main()
