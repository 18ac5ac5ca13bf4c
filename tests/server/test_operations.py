"""What an operator sees: /metrics by Prometheus' conventions (checked by
`promtool check metrics`), process and build metrics, per-node histograms with
real buckets, logs as JSON lines, and a clear error for a port in use."""
import json
import shutil
import subprocess
import unittest

from harness import GUARD, PLUMBER, UPPER, Server, connect, main, metric, recv_until, run_async, \
    send, submit


class Metrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server().start()
        # Work for every family: a WebSocket run, a request/response, a refusal.
        async def go():
            async with connect(cls.server) as ws:
                run = (await submit(ws, graph=UPPER))["run"]
                await send(ws, {"op": "input", "run": run, "values": ["a", "b", "c"]})
                await send(ws, {"op": "end", "run": run})
                await recv_until(ws, "done", run)
        run_async(go())
        status, _, _ = cls.server.request("POST", "/v1/graphs/upper_input/process", body='"x"')
        assert status == 200, status
        cls.server.request("GET", "/nowhere")
        status, _, body = cls.server.request("GET", "/metrics")
        assert status == 200, status
        cls.text = body.decode()
        cls.parsed = cls.server.metrics()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.stderr.decode(errors="replace")

    def test_promtool_accepts_the_scrape(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool is missing: tools/setup-deps installs `prometheus`")
        check = subprocess.run([promtool, "check", "metrics"], input=self.text.encode(),
                               capture_output=True, timeout=GUARD)
        self.assertEqual(check.returncode, 0, check.stdout.decode() + check.stderr.decode())
        self.assertEqual(check.stdout.decode() + check.stderr.decode(), "")  # not even a lint warning

    def test_no_family_collides_under_openmetrics(self):
        # A counter X_total is the family X: no other family may be called X.
        types = self.parsed["types"]
        for name, kind in types.items():
            if kind == "counter":
                self.assertTrue(name.endswith("_total"), name)
                self.assertNotIn(name[:-len("_total")], types, name)
        self.assertEqual(types.get("plumber_connections_open"), "gauge")
        self.assertEqual(types.get("plumber_runs_active"), "gauge")

    def test_process_and_build_metrics(self):
        m = self.parsed
        self.assertGreaterEqual(metric(m, "process_cpu_seconds_total"), 0)
        self.assertGreater(metric(m, "process_resident_memory_bytes"), 1 << 20)
        self.assertGreater(metric(m, "process_virtual_memory_bytes"), 1 << 20)
        self.assertGreater(metric(m, "process_open_fds"), 2)
        self.assertGreater(metric(m, "process_max_fds"), 0)
        self.assertGreater(metric(m, "process_start_time_seconds"), 1.5e9)  # a time since 1970
        version = subprocess.run([PLUMBER, "--version"], capture_output=True, timeout=GUARD)
        first = version.stdout.decode().splitlines()[0]  # plumber 0.1.0 (commit abc)
        builds = [(dict(labels), value) for (name, labels), value in m["samples"].items()
                  if name == "plumber_build_info"]
        self.assertEqual(len(builds), 1)
        labels, value = builds[0]
        self.assertEqual(value, 1)
        self.assertEqual(first, f"plumber {labels['version']} (commit {labels['commit']})")
        for key in ("boost", "nlohmann_json", "spdlog"):
            self.assertRegex(labels[key], r"^\d+\.\d+\.\d+$")

    def test_node_histogram_has_buckets_in_seconds(self):
        buckets = {}
        for (name, labels), value in self.parsed["samples"].items():
            labels = dict(labels)
            if (name == "plumber_node_processing_seconds_bucket" and
                    labels["graph"] == "inline:upper" and labels["node"] == "up"):
                buckets[labels["le"]] = value
        self.assertIn("+Inf", buckets)
        finite = sorted((float(le), n) for le, n in buckets.items() if le != "+Inf")
        self.assertGreaterEqual(len(finite), 10)
        self.assertLessEqual(finite[0][0], 1e-5)   # microseconds...
        self.assertGreaterEqual(finite[-1][0], 1)  # ...to seconds
        counts = [n for _, n in finite] + [buckets["+Inf"]]
        self.assertEqual(counts, sorted(counts))  # cumulative
        # Three calls of `upper`, each well under 30 s: all in a finite bucket.
        self.assertEqual(finite[-1][1], 3)
        self.assertEqual(buckets["+Inf"], 3)


class Logs(unittest.TestCase):
    def test_json_lines_for_start_refusal_and_stop(self):
        server = Server("--log-format", "json").start()
        server.request("GET", "/nowhere?token=secret")
        self.assertEqual(server.stop(), 0)
        lines = [json.loads(line) for line in server.stderr.decode().splitlines()]
        for line in lines:
            self.assertEqual(list(line)[:3], ["time", "level", "message"], line)
            self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        messages = [(line["level"], line["message"]) for line in lines]
        self.assertTrue(any(level == "info" and m.startswith("listening on 127.0.0.1:")
                            for level, m in messages), messages)
        refused = [m for level, m in messages if m.startswith("refused GET /nowhere")]
        self.assertEqual(len(refused), 1, messages)
        self.assertNotIn("secret", refused[0])  # the query, which may hold a token, is not logged
        self.assertEqual(messages[-1], ("info", "stopped"))
        self.assertEqual(sum(1 for _, m in messages if m == "stopped"), 1)

    def test_text_lines_have_time_and_level(self):
        server = Server().start()
        self.assertEqual(server.stop(), 0)
        first = server.stderr.decode().splitlines()[0]
        self.assertRegex(first, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} plumber\[\d+\] info: "
                                r"listening on 127\.0\.0\.1:\d+ ")

    def test_port_in_use_names_the_address_not_a_source_file(self):
        with Server() as first:
            taken = subprocess.run([PLUMBER, "serve", "--port", str(first.port)],
                                   capture_output=True, timeout=GUARD)
            err = taken.stderr.decode()
            self.assertEqual(taken.returncode, 1, err)
            self.assertEqual(err, f"plumber: serve: cannot listen on 127.0.0.1:{first.port}: "
                                  "Address already in use\n")


if __name__ == "__main__":
    main()
