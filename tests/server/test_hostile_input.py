"""Hostile JSON and headers against the real server (issue 12): numbers out of
range and deep nesting get a precise error and leak nothing; the Bearer scheme
is case-insensitive."""
import asyncio
import json
import subprocess
import tempfile
import unittest

from harness import (GUARD, PLUMBER, UPPER, Server, connect, main, recv, recv_until, run_async,
                     send, submit)


async def served(server):
    """A fresh client still gets a full run through."""
    async with connect(server) as ws:
        run = (await submit(ws, graph=UPPER))["run"]
        await send(ws, {"op": "input", "run": run, "value": "still"})
        await send(ws, {"op": "end", "run": run})
        frames = await recv_until(ws, "done", run)
        return [f["value"] for f in frames if f["type"] == "output"] == ["STILL"]


DEEP = "[" * 65000 + "]" * 65000


class Json(unittest.TestCase):
    def test_out_of_range_and_deep_frames_get_errors_and_leak_nothing(self):
        # 1e999 used to escape the handler: no reply, and the connection leaked
        # (150 of them exhausted --max-connections; SIGTERM then never completed).
        with Server("--max-connections", "20") as server:
            async def go():
                async with connect(server) as ws:
                    run = (await submit(ws, graph=UPPER))["run"]
                    frame = '{"op": "input", "run": %d, "value": 1e999}' % run
                    await ws.send(frame)
                    reply = await recv(ws)
                    self.assertEqual(reply["code"], "protocol.malformed")
                    self.assertEqual(reply["message"], "frame is not JSON: number overflow parsing "
                                     "'1e999' at line 1, column %d" % (frame.index("1e999") + 1))
                    frame = '{"op": "input", "run": %d, "value": %s}' % (run, DEEP)
                    await ws.send(frame)
                    reply = await recv(ws)
                    # The frame's object is level 1: level 257 is the 256th bracket.
                    self.assertEqual(reply["message"], "frame is not JSON: nested deeper than 256 "
                                     "levels at line 1, column %d" % (frame.index("[") + 256))
                    await ws.send('{"op": "submit", "graph": {"plumber": 1, "nodes": [{"id": "v", '
                                  '"coroutine": "values", "params": {"values": %s}}]}}' % DEEP)
                    self.assertEqual((await recv(ws))["code"], "protocol.malformed")
                    await send(ws, {"op": "input", "run": run, "value": "after"})
                    await send(ws, {"op": "end", "run": run})
                    frames = await recv_until(ws, "done", run)
                    self.assertEqual([f["value"] for f in frames if f["type"] == "output"], ["AFTER"])
                # More connections sending 1e999 than --max-connections: none leaks.
                for _ in range(40):
                    async with connect(server) as ws:
                        await ws.send('{"op": "input", "run": 1, "value": -1e999}')
                        self.assertEqual((await recv(ws))["code"], "protocol.malformed")
                self.assertTrue(await served(server))
            run_async(go())
            self.assertEqual(server.stop(), 0, server.stderr.decode(errors="replace"))

    def test_v1_bodies_out_of_range_or_deep_are_400(self):
        with Server() as server:
            for body, why in [("1e999", "number overflow parsing '1e999' at line 1, column 1"),
                              ('{"a": [1, -1e999]}', "number overflow parsing '-1e999' at line 1, column 11"),
                              (DEEP, "nested deeper than 256 levels at line 1, column 257")]:
                status, _, reply = server.request("POST", "/v1/graphs/upper_input/process", body=body)
                self.assertEqual(status, 400)
                error = json.loads(reply)["error"]
                self.assertEqual(error["code"], "http.bad_request")
                self.assertEqual(error["message"], "the body is not JSON: " + why)
            status, _, reply = server.request("POST", "/v1/graphs/upper_input/process", body='"ok"')
            self.assertEqual(status, 200, reply)
            self.assertIn(b"OK", reply)


class Submit(unittest.TestCase):
    def test_submit_reports_an_out_of_range_line_and_goes_on(self):
        # `plumber submit` hung on an input line with 1e999.
        with Server() as server, tempfile.TemporaryFile() as stdin:
            stdin.write(b'"a"\n1e999\n' + b"[" * 70000 + b'\n"b"\n')
            stdin.seek(0)
            proc = subprocess.run([PLUMBER, "submit", f"ws://127.0.0.1:{server.port}", "upper_input"],
                                  stdin=stdin, capture_output=True, timeout=GUARD)
            self.assertEqual(proc.returncode, 3, proc.stderr)
            self.assertEqual(sorted(proc.stdout.decode().split()), ['"A"', '"B"'])
            errors = [json.loads(line) for line in proc.stderr.decode().splitlines()]
            self.assertEqual([e["input"] for e in errors], ["stdin:2", "stdin:3"])
            self.assertEqual(errors[0]["error"],
                             "malformed JSON: number overflow parsing '1e999' at line 1, column 1")


class Token(unittest.TestCase):
    def test_the_bearer_scheme_is_case_insensitive(self):
        with Server("--token", "s3cret") as server:
            for header, expected in [("Bearer s3cret", 200), ("bearer s3cret", 200),
                                     ("BEARER   s3cret", 200), ("bearer wrong", 401),
                                     ("Bearers3cret", 401), ("Basic s3cret", 401)]:
                status, _, _ = server.request("GET", "/v1/graphs", headers={"Authorization": header})
                self.assertEqual(status, expected, header)


if __name__ == "__main__":
    main()
