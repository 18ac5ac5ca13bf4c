// End-to-end tests of what a user of the command line lives with: logs,
// the progress line, "did you mean", and the README's tour.
#include <algorithm>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "process.hpp"

using nlohmann::json;
using plumber::test::ProcessResult;
using plumber::test::split_lines;

namespace {

const std::string kSource = PLUMBER_SOURCE_DIR;

ProcessResult plumber_cli(std::vector<std::string> args,
                          const std::string& stdin_path = "/dev/null") {
  args.insert(args.begin(), PLUMBER_EXE);
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
                   "--plugin", PLUMBER_TEST_PLUGIN});
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
  // Default level warn: the death, once, and the run that had a failure; the
  // restart is info.
  REQUIRE(logs.size() == 2);
  CHECK(logs[0]["level"] == "warning");
  CHECK(logs[0]["node"] == "x");
  CHECK(logs[0]["worker_pid"].get<int>() > 0);
  CHECK(logs[0]["message"].get<std::string>().find("killed by signal 9") != std::string::npos);
  CHECK(logs[1]["level"] == "warning");
  CHECK(logs[1]["message"].get<std::string>().starts_with("run finished: 3 messages in "));

  const ProcessResult verbose = plumber_cli({"--log-format", "json", "--log-level", "info", "run",
                                             kSource + "/tests/data/plugin_crash_workers.json",
                                             "--plugin", PLUMBER_TEST_PLUGIN});
  INFO(verbose.err);
  std::vector<json> info;
  for (const auto& l : json_lines(verbose.err))
    if (l.contains("level")) info.push_back(l);
  CHECK(count_messages(info, "worker restarted") == 1);
  CHECK(count_messages(info, "run started") == 1);
  CHECK(count_messages(info, "run finished") == 1);
}
