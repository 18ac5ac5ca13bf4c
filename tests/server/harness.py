"""Starts the real `plumber serve` on loopback for the server tests.

Run with Debian's /usr/bin/python3 (python3-websockets, python3-selenium).
PLUMBER_EXE and PLUMBER_SOURCE_DIR come from ctest (tests/CMakeLists.txt).
Timeouts here are hang guards only: no test asserts on elapsed time.
"""
import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

import websockets

PLUMBER = os.environ.get("PLUMBER_EXE", "build/dev/plumber")
SOURCE = os.environ.get("PLUMBER_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
GRAPHS = os.path.join(SOURCE, "graphs")
GUARD = 60  # seconds: a hang guard, never an expectation


class Server:
    """One `plumber serve --port 0` process; `with Server(...) as s:` stops it at the end."""

    def __init__(self, *args, graphs=GRAPHS):
        self.args = [PLUMBER, "serve", "--port", "0"]
        if graphs:
            self.args += ["--graphs", graphs]
        # PLUMBER_SERVE_THREADS runs the whole suite on a multi-threaded io_context.
        if os.environ.get("PLUMBER_SERVE_THREADS"):
            self.args += ["--threads", os.environ["PLUMBER_SERVE_THREADS"]]
        self.args += list(args)
        self.proc = None
        self.port = None
        self.stdout_lines = []
        self.stderr = b""

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        match = re.search(r"listening on http://[^ ]*:(\d+)", line)
        if not match:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise RuntimeError(f"plumber serve did not start: {line!r} {out!r} {err!r}")
        self.port = int(match.group(1))
        self.stdout_lines.append(line)
        # Drain stderr and stdout so the server never blocks on a full pipe.
        self._threads = [threading.Thread(target=self._drain, args=(self.proc.stderr, True), daemon=True),
                         threading.Thread(target=self._drain, args=(self.proc.stdout, False), daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def _drain(self, stream, is_err):
        for line in iter(stream.readline, b""):
            if is_err:
                self.stderr += line
            else:
                self.stdout_lines.append(line.decode(errors="replace"))

    def signal(self, number=signal.SIGTERM):
        self.proc.send_signal(number)

    def wait(self, timeout=GUARD):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("plumber serve did not stop: " + self.stderr.decode(errors="replace"))
        for t in self._threads:
            t.join(timeout=5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code

    def stop(self):
        """SIGTERM, and the exit status (0 after a clean shutdown, no leaks under ASan)."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            code = self.stop()
            if exc[0] is None and code != 0:
                raise AssertionError(f"plumber serve exited {code}: " + self.stderr.decode(errors="replace"))

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    def request(self, method, path, body=None, headers=None, timeout=GUARD):
        """One HTTP request on a new connection: (status, headers dict, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def get_json(self, path, **kw):
        status, headers, body = self.request("GET", path, **kw)
        return status, json.loads(body)

    def metrics(self):
        status, headers, body = self.request("GET", "/metrics")
        assert status == 200, status
        return parse_prometheus(body.decode())


def parse_prometheus(text):
    """Parses the Prometheus text format strictly enough to catch a malformed exposition:
    returns {"types": {family: type}, "samples": {(name, frozenset(labels)): value}}."""
    types, samples = {}, {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        match = sample.match(line)
        assert match, f"malformed sample line: {line!r}"
        labels = frozenset(label.findall(match.group(3) or ""))
        value = float(match.group(4))
        key = (match.group(1), labels)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = value
    return {"types": types, "samples": samples}


def metric(metrics, name, **labels):
    """The value of one sample (0 when absent)."""
    return metrics["samples"].get((name, frozenset(labels.items())), 0.0)


def connect(server, path="/ws", **kw):
    """`async with connect(server) as ws:` (or `ws = await connect(server)`)."""
    kw.setdefault("max_size", None)
    kw.setdefault("open_timeout", GUARD)
    kw.setdefault("close_timeout", 10)
    return websockets.connect(f"ws://127.0.0.1:{server.port}{path}", **kw)


def connect_non_reader(server, path="/ws", **kw):
    """A client that will not read: the client library stops reading its socket
    (max_queue, read_limit), and the socket's receive buffer is 4 KiB, so less
    of what it does not read waits in its kernel buffers before back pressure
    reaches the server (the never-reading test of test_hostile.py: 25 s -> 17 s
    under ASan). The server's own send buffer still takes about 2 MB first."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.settimeout(GUARD)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    for name, value in (("max_queue", 1), ("read_limit", 2 ** 12), ("write_limit", 2 ** 12)):
        kw.setdefault(name, value)
    return connect(server, path, sock=sock, **kw)


async def recv(ws, timeout=GUARD):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def send(ws, frame):
    await ws.send(json.dumps(frame))


async def recv_until(ws, kind, run=None, timeout=GUARD):
    """Frames up to and including the first of `kind` (for `run`, if given)."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        frames.append(frame)
        if frame.get("type") == kind and (run is None or frame.get("run") == run):
            return frames


async def submit(ws, **frame):
    """Submits a graph; returns the accepted (or error) frame. With a `ref`, frames
    of the connection's other runs that arrive first are skipped."""
    frame["op"] = "submit"
    await send(ws, frame)
    while True:
        answer = await recv(ws)
        if "ref" not in frame or answer.get("ref") == frame["ref"] or "run" not in answer:
            return answer


def run_async(coroutine, guard=GUARD * 3):
    return asyncio.run(asyncio.wait_for(coroutine, guard))


def graph(*nodes, edges=(), name="g"):
    """A graph document from (id, coroutine[, params[, extra fields]]) tuples and (from, to) pairs."""
    doc = {"plumber": 1, "name": name, "nodes": [], "edges": []}
    for node in nodes:
        entry = {"id": node[0], "coroutine": node[1]}
        if len(node) > 2 and node[2]:
            entry["params"] = node[2]
        if len(node) > 3:
            entry.update(node[3])
        doc["nodes"].append(entry)
    doc["edges"] = [{"from": a, "to": b} for a, b in edges]
    return doc


UPPER = graph(("in", "input"), ("up", "upper"), ("out", "identity"), edges=[("in", "up"), ("up", "out")], name="upper")


def main():
    unittest.main(verbosity=2)
