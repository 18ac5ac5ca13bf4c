// Remote nodes end to end: the real `plumber run` and `plumber worker` against
// a real redis-server started by each test on a free loopback port.
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "process.hpp"
#include "redis_fixture.hpp"
#include "remote/remote_codec.hpp"

using nlohmann::json;
using plumber::test::Background;
using plumber::test::ProcessResult;
using plumber::test::RedisServer;
using plumber::test::split_lines;
using plumber::test::wait_until;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

/// A temporary directory for a test's graph files and process outputs.
struct Scratch {
  fs::path dir;
  Scratch() {
    std::random_device random;
    dir = fs::temp_directory_path() / ("plumber-remote-" + std::to_string(::getpid()) + "-" +
                                       std::to_string(random() % 1000000));
    fs::create_directories(dir);
  }
  ~Scratch() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
  std::string write(const std::string& name, const json& graph) const {
    const fs::path path = dir / name;
    std::ofstream(path) << graph.dump(2);
    return path.string();
  }
};

/// range(start, stop) -> STEP (remote) -> identity.
json chain(const std::string& broker, const std::string& step, json remote, int start, int stop,
           int batch_size = 1) {
  json mid = {{"id", "sq"}, {"coroutine", step}, {"batch_size", batch_size}};
  if (!remote.is_null()) mid["remote"] = remote;
  return {{"plumber", 1},
          {"name", "rt"},
          {"settings", {{"broker", broker}}},
          {"nodes",
           {{{"id", "n"},
             {"coroutine", "range"},
             {"params", {{"start", start}, {"stop", stop}, {"step", 1}}}},
            mid,
            {{"id", "out"}, {"coroutine", "identity"}}}},
          {"edges", {{{"from", "n"}, {"to", "sq"}}, {{"from", "sq"}, {"to", "out"}}}}};
}

/// values -> STEP (remote) -> identity.
json values_chain(const std::string& broker, const std::string& step, json remote, json values) {
  json graph = chain(broker, step, std::move(remote), 0, 1);
  graph["nodes"][0] = {{"id", "n"}, {"coroutine", "values"}, {"params", {{"values", values}}}};
  return graph;
}

std::vector<std::string> sorted_lines(const std::string& text) {
  auto lines = split_lines(text);
  std::sort(lines.begin(), lines.end());
  return lines;
}

ProcessResult run(std::vector<std::string> args) {
  args.insert(args.begin(), PLUMBER_EXE);
  return plumber::test::run_process(args, "/dev/null", 300s);
}

std::vector<std::string> worker_args(const std::string& graph, const std::string& broker,
                                     std::vector<std::string> more = {}) {
  std::vector<std::string> args{PLUMBER_EXE, "worker", graph, "--node", "sq", "--broker", broker};
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

/// The line of the remote table of `--stats` for node "sq", split on spaces.
std::vector<std::string> remote_stats_line(const std::string& err) {
  bool in_table = false;
  for (const auto& line : split_lines(err)) {
    if (line.starts_with("remote ")) in_table = true;
    if (in_table && line.starts_with("sq ")) {
      std::vector<std::string> fields;
      std::istringstream in(line);
      for (std::string f; in >> f;)
        fields.push_back(f);
      return fields;
    }
  }
  return {};
}

}  // namespace

TEST_CASE("Remote.ResultsEqualTheInProcessRun") {
  RedisServer redis;
  Scratch scratch;
  const std::string local =
      scratch.write("local.json", chain(redis.url(), "sum_squares", nullptr, 0, 2000, 16));
  const std::string remote =
      scratch.write("remote.json", chain(redis.url(), "sum_squares", true, 0, 2000, 16));
  Background a(worker_args(remote, redis.url()), scratch.dir / "a");
  Background b(worker_args(remote, redis.url()), scratch.dir / "b");

  const ProcessResult expected = run({"run", local});
  REQUIRE(expected.exit_code == 0);
  const ProcessResult got = run({"run", remote, "--stats"});
  INFO(got.err);
  REQUIRE(got.exit_code == 0);
  CHECK(split_lines(got.out).size() == 2000);
  CHECK(sorted_lines(got.out) == sorted_lines(expected.out));
  const auto stats = remote_stats_line(got.err);
  REQUIRE(stats.size() >= 9);
  CHECK(stats[2] == "2000");  // acked
  CHECK(stats[3] == "0");     // in flight at the end

  a.signal(SIGTERM);
  b.signal(SIGTERM);
  CHECK(a.wait() == 0);
  CHECK(b.wait() == 0);
}

TEST_CASE("Remote.TwoWorkersShareTheLoad") {
  RedisServer redis;
  Scratch scratch;
  // Each step takes about a millisecond: one worker alone would fall behind.
  const std::string graph =
      scratch.write("g.json", chain(redis.url(), "sum_squares", true, 1'000'000, 1'000'400));
  Background a(worker_args(graph, redis.url()), scratch.dir / "a");
  Background b(worker_args(graph, redis.url()), scratch.dir / "b");
  // Both have joined before the host sends anything.
  REQUIRE(wait_until([&] { return redis.cli({"SCARD", "plumber:rt:sq:workers"}) == "2\n"; }));
  const ProcessResult got = run({"run", graph, "--stats"});
  INFO(got.err);
  REQUIRE(got.exit_code == 0);
  CHECK(split_lines(got.out).size() == 400);
  const auto stats = remote_stats_line(got.err);
  REQUIRE(stats.size() >= 10);
  CHECK(std::count(stats[9].begin(), stats[9].end(), ',') == 1);  // two consumers answered
}

TEST_CASE("Remote.StepErrorsBecomeErrorRecords") {
  RedisServer redis;
  Scratch scratch;
  const std::string graph =
      scratch.write("g.json", values_chain(redis.url(), "shout", true, {"a", 1, "b"}));
  Background worker(worker_args(graph, redis.url(), {"--plugin", PLUMBER_TEST_PLUGIN}),
                    scratch.dir / "w");
  const ProcessResult got = run({"run", graph, "--records", "--plugin", PLUMBER_TEST_PLUGIN});
  INFO(got.err);
  CHECK(got.exit_code == 3);  // some messages failed
  int values = 0, errors = 0;
  // Values on stdout, error records on stderr.
  for (const auto& line : split_lines(got.out + got.err)) {
    if (!line.starts_with("{")) continue;
    const json record = json::parse(line);
    if (record.contains("error")) {
      ++errors;
      CHECK(record["node"] == "sq");
      CHECK(record["error"].get<std::string>().find("shout takes a string") != std::string::npos);
    } else {
      ++values;
    }
  }
  CHECK(values == 2);
  CHECK(errors == 1);
}

TEST_CASE("Remote.WorkerKilledMidStreamLosesAndDuplicatesNothing") {
  RedisServer redis;
  Scratch scratch;
  // Two more deliveries allowed (the default, retries + 1, is one).
  const json remote = {{"claim_idle_ms", 300}, {"max_deliveries", 3}};
  const std::string local =
      scratch.write("local.json", chain(redis.url(), "sum_squares", nullptr, 1'000'000, 1'000'600));
  const std::string graph =
      scratch.write("g.json", chain(redis.url(), "sum_squares", remote, 1'000'000, 1'000'600));
  Background a(worker_args(graph, redis.url()), scratch.dir / "a");
  Background b(worker_args(graph, redis.url()), scratch.dir / "b");
  REQUIRE(wait_until([&] { return redis.cli({"SCARD", "plumber:rt:sq:workers"}) == "2\n"; }));
  Background host({PLUMBER_EXE, "run", graph, "--stats"}, scratch.dir / "host");
  REQUIRE(wait_until([&] { return split_lines(host.out()).size() >= 50; }));
  a.signal(SIGKILL);  // with the entries it had read and not acknowledged
  REQUIRE(host.wait() == 0);
  INFO(host.err());
  const ProcessResult expected = run({"run", local});
  CHECK(split_lines(host.out()).size() == 600);
  CHECK(sorted_lines(host.out()) == sorted_lines(expected.out));
}

TEST_CASE("Remote.PoisonMessageIsDeadLettered") {
  RedisServer redis;
  Scratch scratch;
  const json remote = {{"claim_idle_ms", 200}, {"max_deliveries", 2}};
  const std::string graph =
      scratch.write("g.json", values_chain(redis.url(), "crash", remote, {"a", "crash", "b"}));
  // Two consumer processes, restarted when "crash" kills them.
  Background worker(
      worker_args(graph, redis.url(), {"--procs", "2", "--plugin", PLUMBER_TEST_PLUGIN}),
      scratch.dir / "w");
  const ProcessResult got = run({"run", graph, "--records", "--plugin", PLUMBER_TEST_PLUGIN});
  INFO(got.err);
  CHECK(got.exit_code == 3);
  int values = 0, errors = 0;
  // Values on stdout, error records on stderr.
  for (const auto& line : split_lines(got.out + got.err)) {
    if (!line.starts_with("{")) continue;
    const json record = json::parse(line);
    if (record.contains("error")) {
      ++errors;
      CHECK(record["error"].get<std::string>().find("max_deliveries 2") != std::string::npos);
    } else {
      ++values;
    }
  }
  CHECK(values == 2);
  CHECK(errors == 1);
  CHECK(redis.cli({"XLEN", "plumber:rt:sq:dead"}) == "1\n");
  worker.signal(SIGTERM);
  CHECK(worker.wait() == 0);
}

TEST_CASE("Remote.BrokerKilledAndRestartedLosesNothingAcknowledged") {
  RedisServer redis;
  Scratch scratch;
  const json remote = {{"claim_idle_ms", 1000}, {"max_deliveries", 3}};
  const std::string local =
      scratch.write("local.json", chain(redis.url(), "sum_squares", nullptr, 1'000'000, 1'000'600));
  const std::string graph =
      scratch.write("g.json", chain(redis.url(), "sum_squares", remote, 1'000'000, 1'000'600));
  Background a(worker_args(graph, redis.url()), scratch.dir / "a");
  REQUIRE(wait_until([&] { return redis.cli({"SCARD", "plumber:rt:sq:workers"}) == "1\n"; }));
  Background host({PLUMBER_EXE, "run", graph, "--stats"}, scratch.dir / "host");
  REQUIRE(wait_until([&] { return split_lines(host.out()).size() >= 50; }));
  redis.kill9();
  redis.restart();
  const int status = host.wait();
  INFO(host.err());
  REQUIRE(status == 0);
  const ProcessResult expected = run({"run", local});
  CHECK(split_lines(host.out()).size() == 600);
  CHECK(sorted_lines(host.out()) == sorted_lines(expected.out));
}

TEST_CASE("Remote.NoWorkerTimesOutAtStart") {
  RedisServer redis;
  Scratch scratch;
  const std::string graph = scratch.write("g.json", chain(redis.url(), "sum_squares", true, 0, 3));
  const ProcessResult got = run({"run", graph, "--start-timeout-ms", "500"});
  CHECK(got.exit_code == 1);
  CHECK(got.err.find("node \"sq\"") != std::string::npos);
  CHECK(got.err.find("no worker joined the consumer group \"sq\" on " + redis.url() +
                     " within 500 ms") != std::string::npos);
}

TEST_CASE("Remote.UnreachableBrokerFailsAtStart") {
  Scratch scratch;
  const std::string broker = "redis://127.0.0.1:1";
  const std::string graph = scratch.write("g.json", chain(broker, "sum_squares", true, 0, 3));
  const ProcessResult got = run({"run", graph, "--start-timeout-ms", "500"});
  CHECK(got.exit_code == 1);
  CHECK(got.err.find("node \"sq\"") != std::string::npos);
  CHECK(got.err.find("cannot reach the broker redis://127.0.0.1:1") != std::string::npos);
}

TEST_CASE("Remote.WorkerRefusesANodeThatIsNotRemote") {
  Scratch scratch;
  const std::string graph =
      scratch.write("g.json", chain("redis://127.0.0.1:1", "sum_squares", nullptr, 0, 3));
  const ProcessResult got = run({"worker", graph, "--node", "sq"});
  CHECK(got.exit_code == 2);
  CHECK(got.err.find("node \"sq\" is not remote") != std::string::npos);
}

TEST_CASE("Remote.StartStopCyclesLeaveNothingBehind") {
  RedisServer redis;
  Scratch scratch;
  const std::string graph = scratch.write("g.json", chain(redis.url(), "sum_squares", true, 0, 5));
  Background worker(worker_args(graph, redis.url()), scratch.dir / "w");
  for (int cycle = 0; cycle < 100; ++cycle) {
    const ProcessResult got = run({"run", graph});
    REQUIRE(got.exit_code == 0);
    REQUIRE(split_lines(got.out).size() == 5);
  }
  worker.signal(SIGTERM);
  REQUIRE(worker.wait() == 0);
  // Left: the (empty) task stream and its group, with no consumer and nothing pending.
  CHECK(redis.cli({"KEYS", "plumber:*"}) == "plumber:rt:sq:tasks\n");
  CHECK(redis.cli({"XLEN", "plumber:rt:sq:tasks"}) == "0\n");
  const std::string groups = redis.cli({"XINFO", "GROUPS", "plumber:rt:sq:tasks"});
  CHECK(groups.find("consumers\n0\npending\n0\n") != std::string::npos);
}

TEST_CASE("Remote.InFlightBoundsWhatTheBrokerHolds") {
  RedisServer redis;
  Scratch scratch;
  // A slow worker and a fast source: the host keeps at most 4 messages out.
  const json remote = {{"in_flight", 4}};
  const std::string graph =
      scratch.write("g.json", chain(redis.url(), "sum_squares", remote, 2'000'000, 2'000'200));
  Background worker(worker_args(graph, redis.url()), scratch.dir / "w");
  REQUIRE(wait_until([&] { return redis.cli({"SCARD", "plumber:rt:sq:workers"}) == "1\n"; }));
  Background host({PLUMBER_EXE, "run", graph, "--stats"}, scratch.dir / "host");
  long most = 0;
  int samples = 0;
  while (host.running()) {
    const std::string length = redis.cli({"XLEN", "plumber:rt:sq:tasks"});
    if (!length.empty()) most = std::max(most, std::stol(length));
    ++samples;
  }
  REQUIRE(host.wait() == 0);
  CHECK(split_lines(host.out()).size() == 200);
  CHECK(samples > 0);
  CHECK(most <= 4);
}

TEST_CASE("Remote.DemoScaleOutRuns") {
  // demos/scale_out/run.sh: a broker, two workers and a host as processes.
  const ProcessResult got = plumber::test::run_process(
      {"/bin/bash", std::string(PLUMBER_SOURCE_DIR) + "/demos/scale_out/run.sh", PLUMBER_EXE},
      "/dev/null", 300s);
  INFO(got.out << got.err);
  CHECK(got.exit_code == 0);
  CHECK(got.out.find("same output as in process (2000 lines)") != std::string::npos);
  CHECK(got.out.find("nothing lost, nothing duplicated (2000 lines)") != std::string::npos);
}

TEST_CASE("Remote.EntriesCarryTheEnvelopeAndBinaryBlobs") {
  using namespace plumber::detail;
  std::vector<plumber::Message> batch(2);
  batch[0].id = 7;
  batch[0].value = plumber::json{{"k", "v"}};
  batch[0].priority = 2;
  batch[0].deadline = plumber::Clock::now() + 60s;
  batch[0].trace = 99;
  std::vector<std::byte> bytes{std::byte{0}, std::byte{255}, std::byte{'\n'}, std::byte{0}};
  batch[0].blobs.emplace_back(bytes);
  batch[1].id = 8;
  batch[1].value = "plain";
  RedisArgs args{"XADD", "stream", "*"};
  encode_task(args, 42, "reply-stream", batch);
  // As the broker gives the fields back: [name, value, ...].
  RedisReply fields;
  fields.type = RedisReply::Type::array;
  for (std::size_t i = 3; i < args.size(); ++i) {
    RedisReply f;
    f.type = RedisReply::Type::string;
    f.str = args[i];
    fields.elements.push_back(std::move(f));
  }
  RemoteTask task = decode_task(fields);
  CHECK(task.request == 42);
  CHECK(task.reply == "reply-stream");
  REQUIRE(task.batch.size() == 2);
  CHECK(task.batch[0].id == 7);
  CHECK(task.batch[0].value == batch[0].value);
  CHECK(task.batch[0].priority == 2);
  CHECK(task.batch[0].trace == 99);
  CHECK(task.batch[0].deadline > plumber::Clock::now() + 50s);
  REQUIRE(task.batch[0].blobs.size() == 1);
  const auto got = task.batch[0].blobs[0].bytes();
  CHECK(std::vector<std::byte>(got.begin(), got.end()) == bytes);
  CHECK(task.batch[1].value == "plain");
  CHECK(task.batch[1].deadline == plumber::Clock::time_point::max());
  CHECK(task.batch[1].blobs.empty());

  RedisArgs failure;
  encode_failure(failure, 42, "host:1", 3, "boom", true);
  RedisReply failure_fields;
  failure_fields.type = RedisReply::Type::array;
  for (auto& a : failure) {
    RedisReply f;
    f.type = RedisReply::Type::string;
    f.str = a;
    failure_fields.elements.push_back(std::move(f));
  }
  const RemoteResult result = decode_result(failure_fields);
  CHECK(result.request == 42);
  CHECK(result.consumer == "host:1");
  CHECK(result.deliveries == 3);
  CHECK(result.error == std::optional<std::string>("boom"));
  CHECK(result.final);
}
