// `exec` steps through the real `plumber` binary: the Python example graph
// (Aqueduct's SumHandler and CatDetector) under Debian's /usr/bin/python3,
// a program's stderr in the host's log, and an auto-scaled pool in --stats.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "process.hpp"
#include "test_paths.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using plumber::test::ProcessResult;
using plumber::test::run_process;
using plumber::test::split_lines;

namespace {

const std::string kSource = plumber::test::paths::source_dir;

/// `plumber ARGS...` with Debian's python3 first on PATH.
ProcessResult plumber_with_debian_python(const std::vector<std::string>& args) {
  const char* path = std::getenv("PATH");
  std::vector<std::string> all{"/usr/bin/env", "PATH=/usr/bin:" + std::string(path ? path : ""),
                               plumber::test::paths::exe};
  all.insert(all.end(), args.begin(), args.end());
  return run_process(all);
}

std::vector<std::string> sorted(std::vector<std::string> lines) {
  std::sort(lines.begin(), lines.end());
  return lines;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("plumber-exec-cli-" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
  }
};

}  // namespace

TEST_CASE("ExecCli.PythonStepsGraph") {
  const ProcessResult result =
      plumber_with_debian_python({"run", "--stats", kSource + "/graphs/python_steps.json"});
  INFO("stderr: " << result.err);
  CHECK(result.exit_code == 0);
  CHECK(sorted(split_lines(result.out)) ==
        sorted(split_lines(read_file(kSource + "/graphs/python_steps.expected"))));
  // The detector got batches, not single images.
  bool batched = false;
  for (const auto& line : split_lines(result.err)) {
    if (line.rfind("cats ", 0) == 0 && line.find("workers") == std::string::npos) {
      std::istringstream fields(line);
      std::string node;
      std::size_t procs = 0, tasks = 0, in_flight = 0, batches = 0;
      if (fields >> node >> procs >> tasks >> in_flight >> batches && tasks == 40) {
        batched = batches < 40;
      }
    }
  }
  CHECK(batched);
}

TEST_CASE("ExecCli.StderrGoesToTheLog") {
  TempDir dir;
  dir.write("talk.py", R"(import sys
import plumber_step

def on_start():
    print("model loaded")          # print goes to stderr: the host's log

@plumber_step.step
def handle(value):
    sys.stderr.write("handling %s\n" % value)
    return value
)");
  dir.write("talk.json", R"({"plumber": 1, "nodes": [
    {"id": "src", "coroutine": "values", "params": {"values": [1, 2]}},
    {"id": "talker", "coroutine": "exec",
     "params": {"command": ["python3", "talk.py"], "env": {"PYTHONPATH": ")" +
                             kSource + R"(/python"}}},
    {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "talker"}, {"from": "talker", "to": "out"}]})");
  const ProcessResult result = plumber_with_debian_python(
      {"run", "--log-format", "json", (dir.path / "talk.json").string()});
  INFO("stderr: " << result.err);
  CHECK(result.exit_code == 0);
  CHECK(sorted(split_lines(result.out)) == std::vector<std::string>{"1", "2"});
  int logged = 0;
  for (const auto& line : split_lines(result.err)) {
    const auto record = nlohmann::json::parse(line, nullptr, false);
    if (record.is_discarded() || !record.is_object()) continue;
    if (record.value("node", "") != "talker" || !record.contains("worker_pid")) continue;
    const std::string message = record.value("message", "");
    if (message == "model loaded" || message == "handling 1" || message == "handling 2") ++logged;
  }
  CHECK(logged == 3);
}

TEST_CASE("ExecCli.AutoscaledPoolInStats") {
  TempDir dir;
  dir.write("slow.py", R"(import time
import plumber_step

@plumber_step.step
def handle(value):
    time.sleep(0.002)
    return value
)");
  dir.write("scaled.json", R"({"plumber": 1, "nodes": [
    {"id": "src", "coroutine": "range", "params": {"stop": 20}},
    {"id": "slow", "coroutine": "exec", "procs": {"min": 1, "max": 2},
     "params": {"command": ["python3", "slow.py"], "env": {"PYTHONPATH": ")" +
                               kSource + R"(/python"}}},
    {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "slow"}, {"from": "slow", "to": "out"}]})");
  const ProcessResult result =
      plumber_with_debian_python({"run", "--stats", (dir.path / "scaled.json").string()});
  INFO("stderr: " << result.err);
  CHECK(result.exit_code == 0);
  CHECK(split_lines(result.out).size() == 20);
  CHECK(result.err.find("slow           scaled 1..2, now ") != std::string::npos);
}

TEST_CASE("ExecCli.ValidateExecParams") {
  TempDir dir;
  dir.write("bad.json", R"({"plumber": 1, "nodes": [
    {"id": "src", "coroutine": "range", "params": {"stop": 2}},
    {"id": "x", "coroutine": "exec", "threads": 2, "procs": {"min": 3, "max": 2, "cooldown": 5},
     "params": {"command": ["python3", 7], "env": {"A": 1}}},
    {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "x"}, {"from": "x", "to": "out"}]})");
  const ProcessResult result =
      run_process({plumber::test::paths::exe, "validate", (dir.path / "bad.json").string()});
  CHECK(result.exit_code == 2);
  const std::string file = (dir.path / "bad.json").string();
  const auto lines = split_lines(result.out + result.err);
  auto has = [&](const std::string& text) {
    return std::any_of(lines.begin(), lines.end(),
                       [&](const std::string& l) { return l.find(text) != std::string::npos; });
  };
  INFO("output: " << result.out << result.err);
  CHECK(has("/nodes/1/procs/cooldown: unknown field \"cooldown\" (did you mean \"cooldown_ms\"?)"));
  CHECK(has("/nodes/1/procs/max: max must be at least min (3), not 2"));
  CHECK(has("/nodes/1/params/command/1: each part of command must be a string, not integer"));
  CHECK(has("/nodes/1/params/env/A: environment variable \"A\" must be a string, not integer"));
  CHECK(has("/nodes/1/threads: an exec step runs in copies of its program, not on threads"));
}

// The kit installs with pip from the source tree (a copy of it: pip builds in
// place), with Debian's python3 and its setuptools, no network.
TEST_CASE("ExecCli.KitInstallsWithPip") {
  TempDir dir;
  fs::copy(kSource + "/python", dir.path / "src", fs::copy_options::recursive);
  const ProcessResult pip = run_process(
      {"/usr/bin/python3", "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
       "--no-index", "--target", (dir.path / "site").string(), (dir.path / "src").string()});
  INFO("pip: " << pip.err);
  REQUIRE(pip.exit_code == 0);
  const ProcessResult check =
      run_process({"/usr/bin/env", "PYTHONPATH=" + (dir.path / "site").string(), "/usr/bin/python3",
                   "-c", "import plumber_step, os; print(os.path.dirname(plumber_step.__file__))"});
  CHECK(check.exit_code == 0);
  CHECK(check.out == (dir.path / "site" / "plumber_step").string() + "\n");
}

// Auto-scaling works for a plugin's step in worker processes too.
TEST_CASE("ExecCli.AutoscaledPluginStep") {
  TempDir dir;
  dir.write("shout.json", R"({"plumber": 1, "nodes": [
    {"id": "src", "coroutine": "values", "params": {"values": ["a", "b", "c"]}},
    {"id": "s", "coroutine": "shout", "procs": {"min": 1, "max": 2}}],
    "edges": [{"from": "src", "to": "s"}]})");
  const ProcessResult result =
      run_process({plumber::test::paths::exe, "run", "--stats", "--plugin",
                   plumber::test::paths::test_plugin, (dir.path / "shout.json").string()});
  INFO("stderr: " << result.err);
  CHECK(result.exit_code == 0);
  CHECK(sorted(split_lines(result.out)) == std::vector<std::string>{"\"A!\"", "\"B!\"", "\"C!\""});
  CHECK(result.err.find("s              scaled 1..2, now ") != std::string::npos);
}
