// End-to-end tests of what a user of the command line lives with: logs,
// the progress line, "did you mean", and the README's tour.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "process.hpp"
#include "test_paths.hpp"

using nlohmann::json;
using plumber::test::ProcessResult;
using plumber::test::split_lines;

namespace {

const std::string kSource = plumber::test::paths::source_dir;

ProcessResult plumber_cli(std::vector<std::string> args,
                          const std::string& stdin_path = "/dev/null") {
  args.insert(args.begin(), plumber::test::paths::exe);
  return plumber::test::run_process(args, stdin_path);
}

/// stderr's lines, each parsed as JSON (a line that is not JSON fails the test).
std::vector<json> json_lines(const std::string& text) {
  std::vector<json> lines;
  for (const auto& line : split_lines(text)) {
    INFO(line);
    REQUIRE(json::accept(line));
    lines.push_back(json::parse(line));
  }
  return lines;
}

std::size_t count_messages(const std::vector<json>& lines, const std::string& prefix) {
  return static_cast<std::size_t>(std::count_if(lines.begin(), lines.end(), [&](const json& l) {
    return l["message"].get<std::string>().starts_with(prefix);
  }));
}

}  // namespace

TEST_CASE("Cli.LogJsonRunStartAndStop") {
  const ProcessResult r = plumber_cli(
      {"run", kSource + "/graphs/strings.json", "--log-format", "json", "--log-level", "info"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(split_lines(r.out).size() == 5);  // stdout has the data only
  const auto lines = json_lines(r.err);
  REQUIRE(lines.size() == 2);
  for (const auto& l : lines) {
    CHECK(l["level"] == "info");
    CHECK(l["run"] == "strings");
    CHECK(l["time"].get<std::string>().ends_with("Z"));
  }
  CHECK(count_messages(lines, "run started: ") == 1);
  CHECK(count_messages(lines, "run finished: 5 messages in ") == 1);
}

TEST_CASE("Cli.LogDefaultIsQuietForRun") {
  // warn by default: a run that goes well writes nothing to stderr.
  const ProcessResult r = plumber_cli({"run", kSource + "/graphs/strings.json"});
  CHECK(r.exit_code == 0);
  CHECK(r.err == "");
}

TEST_CASE("Cli.LogWorkerDeathAndRestart") {
  const ProcessResult r =
      plumber_cli({"--log-format", "json", "run", kSource + "/tests/data/plugin_crash_workers.json",
                   "--plugin", plumber::test::paths::test_plugin});
  INFO(r.err);
  CHECK(r.exit_code == 3);  // the message that killed its worker failed
  auto out = split_lines(r.out);
  std::sort(out.begin(), out.end());
  CHECK(out == std::vector<std::string>{"\"a\"", "\"b\""});
  std::vector<json> logs;
  std::vector<json> records;
  for (const auto& l : json_lines(r.err))
    (l.contains("level") ? logs : records).push_back(l);
  REQUIRE(records.size() == 1);  // the error record of "crash"
  CHECK(records[0]["node"] == "x");
  // Default level warn: the death, once (the restart and the run's end are info).
  REQUIRE(logs.size() == 1);
  CHECK(logs[0]["level"] == "warning");
  CHECK(logs[0]["node"] == "x");
  CHECK(logs[0]["worker_pid"].get<int>() > 0);
  CHECK(logs[0]["message"].get<std::string>().find("killed by signal 9") != std::string::npos);

  const ProcessResult verbose = plumber_cli({"--log-format", "json", "--log-level", "info", "run",
                                             kSource + "/tests/data/plugin_crash_workers.json",
                                             "--plugin", plumber::test::paths::test_plugin});
  INFO(verbose.err);
  std::vector<json> info;
  for (const auto& l : json_lines(verbose.err))
    if (l.contains("level")) info.push_back(l);
  CHECK(count_messages(info, "worker restarted") == 1);
  CHECK(count_messages(info, "run started") == 1);
  CHECK(count_messages(info, "run finished") == 1);
}

namespace {

bool is_progress(const std::string& piece) {
  return piece.find(" messages (") != std::string::npos ||
         piece.find(" lines read (") != std::string::npos;
}

}  // namespace

TEST_CASE("Cli.ProgressCountsInputAndKeepsRecordsApart") {
  const ProcessResult r = plumber_cli({"run", "--progress", kSource + "/graphs/upper_input.json",
                                       "--input", kSource + "/graphs/upper_input.input"});
  INFO(r.err);
  CHECK(r.exit_code == 3);  // 42 is not a string
  CHECK(split_lines(r.out).size() == 3);
  // The last drawing: every line read, every byte of the file, every output.
  CHECK(r.err.ends_with("\r4 lines read (33 B of 33 B, 100%), 4 outputs\n"));
  int records = 0;
  for (const auto& line : split_lines(r.err)) {
    // A line is progress drawings ("\r..."), or one error record: never both.
    if (line.find('{') != std::string::npos) {
      CHECK(line.starts_with("{\"id\":"));
      CHECK(json::accept(line));
      ++records;
    } else {
      CHECK(is_progress(line));
    }
  }
  CHECK(records == 1);
}

TEST_CASE("Cli.ProgressNeverInterleavesWithStdoutInOneFile") {
  // stdout and stderr to the same file: whole lines, each data or progress.
  const std::string command = std::string("'") + plumber::test::paths::exe + "' run --progress '" +
                              kSource + "/graphs/fib.json' 2>&1";
  const ProcessResult r = plumber::test::run_process({"/bin/sh", "-c", command});
  REQUIRE(r.exit_code == 0);
  INFO(r.out);
  int values = 0;
  for (const auto& line : split_lines(r.out)) {
    if (line.starts_with("\r")) {
      CHECK(is_progress(line));
      CHECK(line.find('"') == std::string::npos);
    } else {
      CHECK(json::accept(line));
      ++values;
    }
  }
  CHECK(values == 11);
  CHECK(r.out.ends_with("\r11/11 messages (100%)\n"));
}

TEST_CASE("Cli.NoProgress") {
  const ProcessResult off = plumber_cli({"run", "--no-progress", kSource + "/graphs/fib.json"});
  CHECK(off.exit_code == 0);
  CHECK(off.err == "");
  const ProcessResult both =
      plumber_cli({"run", "--progress", "--no-progress", kSource + "/graphs/fib.json"});
  CHECK(both.exit_code == 2);
  CHECK(both.err.find("--progress excludes --no-progress") != std::string::npos);
}

TEST_CASE("Cli.DidYouMean") {
  const ProcessResult command = plumber_cli({"runn", kSource + "/graphs/strings.json"});
  CHECK(command.exit_code == 2);
  CHECK(command.out == "");
  CHECK(
      split_lines(command.err).at(0) ==
      "plumber: unknown command \"runn\" (did you mean \"run\"?) (commands: run, worker, validate, "
      "dot, list, serve, submit)");
  const ProcessResult flag = plumber_cli({"run", "--recrods", kSource + "/graphs/strings.json"});
  CHECK(flag.exit_code == 2);
  CHECK(split_lines(flag.err).at(0) ==
        "plumber: unknown option --recrods for `plumber run` (did you mean \"--records\"?)");
  const ProcessResult global = plumber_cli({"--log-levle", "info", "list"});
  CHECK(global.exit_code == 2);
  CHECK(split_lines(global.err).at(0) ==
        "plumber: unknown option --log-levle (did you mean \"--log-level\"?)");
  // Values of options are not taken for commands or flags.
  const ProcessResult fine = plumber_cli(
      {"--log-level", "warn", "run", "--threads", "2", kSource + "/graphs/strings.json"});
  CHECK(fine.exit_code == 0);
}

TEST_CASE("Cli.SubmitPluginChecksTheGraphFirst") {
  // A broken graph is reported without a server (none listens on port 1).
  const std::string file = kSource + "/tests/data/bad_unknown_coroutine.json";
  const ProcessResult bad = plumber_cli(
      {"submit", "ws://127.0.0.1:1", file, "--plugin", plumber::test::paths::test_plugin});
  CHECK(bad.exit_code == 2);
  CHECK(
      split_lines(bad.err) ==
      std::vector<std::string>{
          file + ": /nodes/1/coroutine: unknown coroutine \"revers\" (did you mean \"reverse\"?)"});
  // A graph of the plugin's coroutines passes the check, and then needs the server.
  const ProcessResult good =
      plumber_cli({"submit", "ws://127.0.0.1:1", kSource + "/tests/data/plugin_shout.json",
                   "--plugin", plumber::test::paths::test_plugin});
  CHECK(good.exit_code == 1);
}

TEST_CASE("Cli.PointersEscapeKeys") {
  const std::string file = kSource + "/tests/data/bad_escaped_keys.json";
  const ProcessResult r = plumber_cli({"validate", file});
  CHECK(r.exit_code == 2);
  const auto lines = split_lines(r.err);
  REQUIRE(lines.size() == 2);
  CHECK(lines[0].starts_with(file + ": /nodes/0/params/a~1b~0c: "));
  CHECK(lines[1].starts_with(file + ": /nodes/1/we~1ird~0key: "));
}

namespace {

/// Checks one event against the trace event format (the JSON object form that
/// Perfetto and chrome://tracing open).
void check_trace_event(const json& e) {
  INFO(e.dump());
  REQUIRE(e.is_object());
  REQUIRE(e.contains("ph"));
  REQUIRE(e["ph"].is_string());
  CHECK(e["pid"].is_number_integer());
  CHECK(e["tid"].is_number_integer());
  CHECK(e["name"].is_string());
  const std::string ph = e["ph"];
  if (ph == "M") {
    CHECK(e["args"].is_object());
  } else if (ph == "X") {
    CHECK(e["ts"].is_number());
    CHECK(e["dur"].is_number());
    CHECK(e["dur"].get<double>() >= 0);
    CHECK(e["cat"].is_string());
  } else {
    CHECK((ph == "s" || ph == "f"));
    CHECK(e["ts"].is_number());
    CHECK(e["id"].is_number_unsigned());
    CHECK(e["cat"].is_string());
  }
}

}  // namespace

TEST_CASE("Cli.TraceIsAChromeTrace") {
  // 200 messages through a step in two worker processes: a track per node and
  // per worker, a span per step call and per worker batch, flows between nodes.
  const std::string file = std::string(plumber::test::paths::trace_dir) + "/workers.trace.json";
  std::remove(file.c_str());
  const ProcessResult r = plumber_cli({"run", kSource + "/graphs/workers.json", "--trace", file});
  CHECK(r.exit_code == 0);
  std::ifstream in(file);
  REQUIRE(in);
  const json trace = json::parse(in);
  REQUIRE(trace["traceEvents"].is_array());
  CHECK(trace["otherData"]["dropped_events"] == 0);
  std::map<std::string, int> tracks;  // node track name -> tid
  std::set<int> worker_pids, step_tids;
  std::size_t worker_batches = 0;
  std::map<std::uint64_t, std::pair<int, int>> flows;  // id -> (starts, ends)
  for (const json& e : trace["traceEvents"]) {
    check_trace_event(e);
    const std::string ph = e["ph"];
    if (ph == "M" && e["name"] == "thread_name" && e["pid"] == 1) {
      tracks[e["args"]["name"]] = e["tid"];
    } else if (ph == "X" && e["cat"] == "step") {
      CHECK(e["pid"] == 1);
      step_tids.insert(e["tid"].get<int>());
    } else if (ph == "X" && e["cat"] == "batch") {
      worker_pids.insert(e["pid"].get<int>());
      ++worker_batches;
    } else if (ph == "s") {
      ++flows[e["id"]].first;
    } else if (ph == "f") {
      ++flows[e["id"]].second;
    }
  }
  // Every node has a track, named after it; the steps' spans are on them.
  CHECK(tracks.size() == 3);
  CHECK(tracks.contains("n (range)"));
  CHECK(tracks.contains("sq (sum_squares)"));
  CHECK(tracks.contains("out (identity)"));
  CHECK(step_tids == std::set<int>{tracks["sq (sum_squares)"], tracks["out (identity)"]});
  // Worker processes: a track each (named), and their batches.
  CHECK(!worker_pids.empty());
  CHECK(worker_pids.size() <= 2);
  CHECK(worker_batches > 0);
  for (int pid : worker_pids) {
    CHECK(pid != 1);
    CHECK(std::any_of(trace["traceEvents"].begin(), trace["traceEvents"].end(), [&](const json& e) {
      return e["ph"] == "M" && e["name"] == "process_name" && e["pid"] == pid;
    }));
  }
  // Sampled messages (1, 17, 33 ...) flow from sq to out: each arrow has both ends.
  CHECK(!flows.empty());
  for (const auto& [id, ends] : flows) {
    INFO(id);
    CHECK(ends.first == 1);
    CHECK(ends.second == 1);
  }
}

TEST_CASE("Cli.TraceToAnUnwritablePathFailsFirst") {
  const ProcessResult r = plumber_cli(
      {"run", kSource + "/graphs/strings.json", "--trace", "/nonexistent/dir/trace.json"});
  CHECK(r.exit_code == 2);
  CHECK(r.out.empty());
  CHECK(r.err.find("cannot write the trace to /nonexistent/dir/trace.json") != std::string::npos);
}
