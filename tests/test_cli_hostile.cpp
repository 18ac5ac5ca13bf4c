// Hostile input and bad days, end to end: each case runs the real `plumber`
// binary on input that once crashed, hung or lost data (issue 12).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "process.hpp"
#include "test_paths.hpp"

namespace fs = std::filesystem;
extern char** environ;
using nlohmann::json;
using plumber::test::ProcessResult;
using plumber::test::split_lines;

namespace {

const std::string kSource = plumber::test::paths::source_dir;
const std::string kGraphs = kSource + "/graphs";

ProcessResult plumber_cli(std::vector<std::string> args,
                          const std::string& stdin_path = "/dev/null") {
  args.insert(args.begin(), plumber::test::paths::exe);
  return plumber::test::run_process(args, stdin_path);
}

/// A scratch directory, removed at the end of the test.
struct Scratch {
  fs::path dir = fs::temp_directory_path() / ("plumber_hostile_" + std::to_string(::getpid()));
  Scratch() { fs::create_directories(dir); }
  ~Scratch() { fs::remove_all(dir); }
  std::string write(const std::string& name, const std::string& text) const {
    const fs::path path = dir / name;
    std::ofstream(path, std::ios::binary) << text;
    return path.string();
  }
};

std::string nested(std::size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

/// A `values` source whose `values` param is `values_text`, into `discard`.
std::string values_graph(const std::string& values_text) {
  return R"({"plumber": 1, "nodes": [{"id": "v", "coroutine": "values", "params": {"values": )" +
         values_text +
         R"(}}, {"id": "out", "coroutine": "discard"}], "edges": [{"from": "v", "to": "out"}]})";
}

/// Fields of /proc/PID/stat after the command name: state, ppid, ... utime (13th).
std::vector<std::string> proc_stat(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return {};
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::vector<std::string> fields;
  for (std::string f; rest >> f;)
    fields.push_back(f);
  return fields;
}

std::vector<int> children_of(int parent) {
  std::vector<int> pids;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const auto fields = proc_stat(std::stoi(name));
    if (fields.size() > 1 && fields[1] == std::to_string(parent)) pids.push_back(std::stoi(name));
  }
  return pids;
}

bool ended(int pid) {
  const auto fields = proc_stat(pid);
  return fields.empty() || fields[0] == "Z" || fields[0] == "X";
}

}  // namespace

TEST_CASE("Cli.HostileLongNodeId") {
  // The id check was a recursive std::regex: ~26,000 characters overflowed the stack.
  Scratch scratch;
  const std::string id(200'000, 'a');
  const std::string good = scratch.write("good.json", R"({"plumber": 1, "nodes": [{"id": ")" + id +
                                                          R"(", "coroutine": "range",
      "params": {"stop": 1}}, {"id": "out", "coroutine": "discard"}],
      "edges": [{"from": ")" + id + R"(", "to": "out"}]})");
  const ProcessResult ok = plumber_cli({"validate", good});
  CHECK(ok.exit_code == 0);
  const std::string bad =
      scratch.write("bad.json", R"({"plumber": 1, "nodes": [{"id": "1)" + id +
                                    R"(", "coroutine": "range", "params": {"stop": 1}}]})");
  const ProcessResult refused = plumber_cli({"validate", bad});
  CHECK(refused.exit_code == 2);
  CHECK(refused.err.find("/nodes/0/id: node id \"1aaa") != std::string::npos);
}

TEST_CASE("Cli.HostileDeepNesting") {
  // 65,000 levels crashed validate, run and dot; now: a diagnostic with line and column.
  Scratch scratch;
  const std::string graph = scratch.write("deep.json", values_graph(nested(65'000)));
  for (const char* command : {"validate", "run", "dot"}) {
    CAPTURE(command);
    const ProcessResult result = plumber_cli({command, graph});
    CHECK(result.exit_code == 2);
    CHECK(result.out.empty());
    CHECK(result.err == graph +
                            ": /: malformed JSON: nested deeper than 256 levels at line 1, "
                            "column 334\n");
  }
  // 256 levels are fine (the graph object, nodes, the node and params are 4).
  const ProcessResult fine =
      plumber_cli({"validate", scratch.write("ok.json", values_graph(nested(252)))});
  CHECK(fine.exit_code == 0);
}

TEST_CASE("Cli.HostileNumberOutOfRange") {
  // nlohmann's out_of_range escaped every handler: validate/run/dot aborted (exit 134).
  Scratch scratch;
  const std::string graph = scratch.write("big.json", values_graph("[1, -1e999]"));
  for (const char* command : {"validate", "run", "dot"}) {
    CAPTURE(command);
    const ProcessResult result = plumber_cli({command, graph});
    CHECK(result.exit_code == 2);
    CHECK(result.err == graph +
                            ": /: malformed JSON: number overflow parsing '-1e999' at line 1, "
                            "column 86\n");
  }
}

TEST_CASE("Cli.HostileInputLines") {
  // After a 1e999 line, `run` dropped every later line and exited 0.
  Scratch scratch;
  const std::string input =
      scratch.write("input.jsonl", "\"a\"\n1e999\n" + nested(100'000) + "\n\"b\"\n-1e999\n\"c\"\n");
  const ProcessResult result = plumber_cli({"run", kGraphs + "/upper_input.json"}, input);
  CHECK(result.exit_code == 3);
  auto out = split_lines(result.out);
  std::sort(out.begin(), out.end());
  CHECK(out == std::vector<std::string>{"\"A\"", "\"B\"", "\"C\""});
  const auto errors = split_lines(result.err);
  REQUIRE(errors.size() == 3);
  CHECK(json::parse(errors[0]) ==
        json{{"input", "stdin:2"},
             {"error", "malformed JSON: number overflow parsing '1e999' at line 1, column 1"}});
  CHECK(json::parse(errors[1])["error"] ==
        "malformed JSON: nested deeper than 256 levels at line 1, column 257");
  CHECK(json::parse(errors[2])["input"] == "stdin:5");
}

TEST_CASE("Cli.HostileJsonlSource") {
  // The jsonl source stopped reading at a 1e999 line.
  Scratch scratch;
  const std::string data = scratch.write("data.jsonl", "1\n1e999\n2\n");
  const std::string graph = scratch.write(
      "jsonl.json",
      R"({"plumber": 1, "nodes": [{"id": "in", "coroutine": "jsonl", "params": {"path": ")" + data +
          R"("}}, {"id": "out", "coroutine": "identity"}],
      "edges": [{"from": "in", "to": "out"}]})");
  const ProcessResult result = plumber_cli({"run", graph});
  CHECK(result.exit_code == 3);
  CHECK(split_lines(result.out) == std::vector<std::string>{"1", "2"});
  INFO("stderr: " << result.err);
  CHECK(result.err.find(data + ":2: malformed JSON: number overflow parsing '1e999'") !=
        std::string::npos);
}

TEST_CASE("Cli.HostileValidateDevZero") {
  // /dev/zero was read without limit.
  const ProcessResult result = plumber_cli({"validate", "/dev/zero"});
  CHECK(result.exit_code == 2);
  CHECK(result.err == "/dev/zero: /: larger than 256 MiB; a graph file is at most that\n");
}

TEST_CASE("Cli.HostileLargeGraphValidatesInLinearTime") {
  // 40,000 nodes took 24 s (quadratic): 200,000 would take ~10 minutes, past ctest's timeout.
  Scratch scratch;
  const std::size_t n = 200'000;
  std::string text =
      R"({"plumber": 1, "nodes": [{"id": "n0", "coroutine": "range", "params": {"stop": 3}})";
  for (std::size_t i = 1; i < n; ++i) {
    text += R"(, {"id": "n)" + std::to_string(i) + R"(", "coroutine": ")" +
            (i + 1 == n ? "discard" : "identity") + "\"}";
  }
  text += R"(], "edges": [)";
  for (std::size_t i = 1; i < n; ++i) {
    text += std::string(i == 1 ? "" : ", ") + R"({"from": "n)" + std::to_string(i - 1) +
            R"(", "to": "n)" + std::to_string(i) + "\"}";
  }
  text += "]}";
  // A generous guard (a sanitizer build on a loaded machine took 68 s): what
  // fails a quadratic validation is ctest's timeout, not this bound.
  const ProcessResult result = plumber::test::run_process(
      {plumber::test::paths::exe, "validate", scratch.write("long.json", text)}, "/dev/null",
      std::chrono::seconds(240));
  CHECK(result.exit_code == 0);
  CHECK(result.out.ends_with(": ok (200000 nodes, 199999 edges)\n"));
}

TEST_CASE("Cli.HostileStdoutFull") {
  // `plumber run g.json > /dev/full` exited 0 with everything lost.
  for (const std::string command : {"run", "validate", "dot"}) {
    CAPTURE(command);
    const ProcessResult result =
        plumber::test::run_process({"/bin/sh", "-c", "exec \"$0\" \"$1\" \"$2\" >/dev/full",
                                    plumber::test::paths::exe, command, kGraphs + "/strings.json"});
    CHECK(result.exit_code == 4);
    CHECK(result.err == "plumber: cannot write the output to stdout: No space left on device\n");
  }
}

TEST_CASE("Cli.HostileOrphanWorkerInAStepDiesWithItsHost") {
  // A worker inside a step that does not return never read its lifeline: when
  // the host was killed, it spun on as an orphan. Now PR_SET_PDEATHSIG kills it.
  Scratch scratch;
  const std::string graph = scratch.write("fib.json", R"({"plumber": 1, "nodes": [
      {"id": "v", "coroutine": "values", "params": {"values": [90]}},
      {"id": "f", "coroutine": "fib", "procs": 1}, {"id": "out", "coroutine": "discard"}],
    "edges": [{"from": "v", "to": "f"}, {"from": "f", "to": "out"}]})");
  std::vector<std::string> args{plumber::test::paths::exe, "run", graph};
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  pid_t host = 0;
  REQUIRE(posix_spawn(&host, argv[0], &actions, nullptr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&actions);

  // Hang guard only: wait until the worker has spent 0.3 s of CPU inside fib(90).
  const auto guard = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int worker = 0;
  while (std::chrono::steady_clock::now() < guard) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const auto children = children_of(host);
    if (children.size() != 1) continue;
    const auto fields = proc_stat(children[0]);
    if (fields.size() > 12 && std::stol(fields[11]) >= 30) {
      worker = children[0];
      break;
    }
  }
  REQUIRE(worker != 0);
  REQUIRE(::kill(host, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(host, &status, 0) == host);
  while (!ended(worker) && std::chrono::steady_clock::now() < guard)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(ended(worker));
  if (!ended(worker)) ::kill(worker, SIGKILL);
}
