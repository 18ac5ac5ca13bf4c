"""`plumber submit ws://HOST:PORT GRAPH`: the CLI client, exit codes as for `run`."""
import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

from harness import GRAPHS, GUARD, PLUMBER, Server, main


def submit(server, *args, stdin=subprocess.DEVNULL, url=None):
    url = url or f"ws://127.0.0.1:{server.port}"
    proc = subprocess.run([PLUMBER, "submit", url, *args], stdin=stdin, capture_output=True,
                          timeout=GUARD)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def expected(name):
    with open(os.path.join(GRAPHS, name + ".expected")) as f:
        return sorted(f.read().splitlines())


class Submit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--token", "t0k").start()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.stderr.decode(errors="replace")

    def test_every_example_graph_gives_its_expected_output(self):
        for name in ["batching", "fib", "strings", "zip", "upper_input"]:
            path = os.path.join(GRAPHS, name + ".json")
            args = [path, "--token", "t0k"]
            if os.path.exists(os.path.join(GRAPHS, name + ".input")):
                args += ["--input", os.path.join(GRAPHS, name + ".input")]
            code, out, err = submit(self.server, *args)
            self.assertEqual(sorted(out.splitlines()), expected(name), name + ": " + err)
            if name == "upper_input":
                self.assertEqual(code, 3)  # 42 is not a string
                [record] = [json.loads(line) for line in err.splitlines()]
                self.assertEqual(record["node"], "up")
                self.assertEqual(record["error"], "upper takes a string, not number")
            else:
                self.assertEqual((code, err), (0, ""), name)

    def test_by_name_from_stdin_with_records_and_stats(self):
        with tempfile.TemporaryFile() as stdin:
            stdin.write(b'"one"\n\nnot json\n"two"\n')
            stdin.seek(0)
            code, out, err = submit(self.server, "upper_input", "--records", "--stats",
                                    "--token", "t0k", stdin=stdin)
        self.assertEqual(code, 3, err)  # a malformed line
        records = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([r["value"] for r in records], ["ONE", "TWO"])
        self.assertEqual([list(r) for r in records], [["id", "node", "value"]] * 2)
        self.assertIn('"input":"stdin:3"', err.replace(" ", ""))
        self.assertIn("received", err)  # the stats table

    def test_invalid_graph_prints_diagnostics_and_exits_2(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump({"plumber": 1, "nodes": [{"id": "a", "coroutine": "revers"}], "edges": []}, f)
            f.flush()
            code, out, err = submit(self.server, f.name, "--token", "t0k")
        self.assertEqual(code, 2)
        self.assertIn(f'{f.name}: /nodes/0/coroutine: unknown coroutine "revers"', err)

    def test_usage_errors_exit_2(self):
        code, out, err = submit(self.server, "strings", "--token", "t0k",
                                "--input", os.path.join(GRAPHS, "upper_input.input"))
        self.assertEqual(code, 2)
        self.assertIn("has none", err)
        code, out, err = submit(self.server, "no/such/file.json")
        self.assertEqual(code, 2)
        code, out, err = submit(self.server, "strings", url="http://localhost:1")
        self.assertEqual(code, 2)

    def test_refused_connections_exit_1(self):
        code, out, err = submit(self.server, "strings")  # no token
        self.assertEqual(code, 1)
        self.assertIn("HTTP 401", err)
        with Server() as other:
            port = other.port
        code, out, err = submit(self.server, "strings", url=f"ws://127.0.0.1:{port}")
        self.assertEqual(code, 1)
        self.assertIn("cannot connect", err)

    def test_sigint_stops_the_run_and_exits_130(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump({"plumber": 1, "nodes": [
                {"id": "n", "coroutine": "range", "params": {"stop": 10 ** 12}},
                {"id": "s", "coroutine": "sleep", "params": {"ms": 1}}],
                "edges": [{"from": "n", "to": "s"}]}, f)
            f.flush()
            proc = subprocess.Popen([PLUMBER, "submit", f"ws://127.0.0.1:{self.server.port}",
                                     f.name, "--token", "t0k"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            self.assertTrue(proc.stdout.readline())  # it runs
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=GUARD)
        self.assertEqual(proc.returncode, 130, err)


class SubmitDuringShutdown(unittest.TestCase):
    def test_server_shutdown_cancels_and_exits_130(self):
        server = Server("--grace-ms", "200").start()
        proc = subprocess.Popen([PLUMBER, "submit", f"ws://127.0.0.1:{server.port}", "upper_input"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        proc.stdin.write(b'"x"\n')
        proc.stdin.flush()
        self.assertEqual(proc.stdout.readline(), b'"X"\n')
        server.signal(signal.SIGTERM)
        # stdin stays open: the run would go on, but the grace period ends it.
        self.assertEqual(proc.wait(timeout=GUARD), 130)
        err = proc.stderr.read().decode()
        self.assertIn("shutting down", err)
        self.assertIn("grace period is over", err)
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
        self.assertEqual(server.wait(), 0)


if __name__ == "__main__":
    main()
