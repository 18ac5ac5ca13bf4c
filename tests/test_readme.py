"""The README's tour, run as written: every `$ command` of its console blocks
runs (from a scratch directory where `graphs/` is the repository's and
`broken.json` is tests/data/readme_broken.json, with `plumber` first on PATH)
and must print on stdout the lines the README shows under it; a command shown
without output must succeed. The graph file shown must be graphs/strings.json.

ctest runs it as Readme.tour; run by hand with PLUMBER_EXE and PLUMBER_SOURCE_DIR set.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

PLUMBER = os.path.abspath(os.environ.get("PLUMBER_EXE", "build/dev/plumber"))
SOURCE = os.path.abspath(os.environ.get("PLUMBER_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..")))
GUARD = 120  # seconds: a hang guard, never an expectation


def tour():
    """The README's section "A 30-second tour", up to "Embedding"."""
    with open(os.path.join(SOURCE, "README.md")) as f:
        text = f.read()
    start = text.index("## A 30-second tour")
    return text[start:text.index("Embedding (C++)", start)]


def console_steps(section):
    """[(command, [expected stdout lines])] of every ```console block."""
    steps = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                command = re.sub(r"\s+#.*$", "", line[2:]).strip()  # the comment is prose
                steps.append((command, []))
            else:
                steps[-1][1].append(line)
    return steps


class Tour(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="plumber-readme-")
        os.symlink(os.path.join(SOURCE, "graphs"), os.path.join(self.dir, "graphs"))
        shutil.copy(os.path.join(SOURCE, "tests", "data", "readme_broken.json"),
                    os.path.join(self.dir, "broken.json"))
        bin_dir = os.path.join(self.dir, "bin")
        os.mkdir(bin_dir)
        os.symlink(PLUMBER, os.path.join(bin_dir, "plumber"))
        if shutil.which("dot") is None:
            # Graphviz is not a dependency: a stand-in that reads the DOT and writes nothing.
            with open(os.path.join(bin_dir, "dot"), "w") as f:
                f.write("#!/bin/sh\ngrep -q '^digraph' || exit 1\n")
            os.chmod(os.path.join(bin_dir, "dot"), 0o755)
        self.env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"])
        self.server = None

    def tearDown(self):
        if self.server and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            self.server.communicate(timeout=GUARD)
        shutil.rmtree(self.dir)

    def test_graph_shown_is_the_file(self):
        shown = re.search(r"```json\n(.*?)```", tour(), re.S).group(1)
        with open(os.path.join(SOURCE, "graphs", "strings.json")) as f:
            self.assertEqual(json.loads(shown), json.load(f))

    def test_commands_print_what_the_readme_shows(self):
        steps = console_steps(tour())
        self.assertGreaterEqual(len(steps), 10)
        port = None
        for command, expected in steps:
            with self.subTest(command=command):
                if command.endswith("&"):
                    # The server: on a free port, which later commands use for 8080.
                    args = command[:-1].split() + ["--port", "0"]
                    self.server = subprocess.Popen(args, cwd=self.dir, env=self.env,
                                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                    line = self.server.stdout.readline().decode()
                    port = re.search(r":(\d+) ", line).group(1)
                    self.assertEqual([line.rstrip("\n").replace(f":{port} ", ":8080 ")], expected)
                    continue
                if port:
                    command = command.replace(":8080", f":{port}")
                run = subprocess.run(["/bin/sh", "-c", command], cwd=self.dir, env=self.env,
                                     capture_output=True, timeout=GUARD)
                out = run.stdout.decode().splitlines()
                if not expected:
                    if "validate broken.json" not in command:
                        self.assertEqual(run.returncode, 0, run.stderr.decode())
                    continue
                if command.startswith("plumber validate broken.json"):
                    self.assertEqual(run.returncode, 2)
                    out = run.stderr.decode().splitlines()  # diagnostics go to stderr
                # Steps run concurrently: the order of output lines may vary.
                self.assertEqual(sorted(out), sorted(expected), run.stderr.decode())


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
