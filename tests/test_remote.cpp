// Remote nodes end to end: the real `plumber run` and `plumber worker` against
// a real redis-server started by each test on a free loopback port.
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include "plumber/plugin.hpp"
#include "plumber/plumber.hpp"
#include "process.hpp"
#include "redis_fixture.hpp"
#include "remote/remote_codec.hpp"
#include "sanitizers.hpp"
#include "test_paths.hpp"

using nlohmann::json;
using plumber::test::Background;
using plumber::test::ProcessResult;
using plumber::test::RedisServer;
using plumber::test::split_lines;
using plumber::test::wait_until;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

constexpr int kStartStopCycles = plumber::test::cycles(100);

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
  args.insert(args.begin(), plumber::test::paths::exe);
  return plumber::test::run_process(args, "/dev/null", 300s);
}

std::vector<std::string> worker_args(const std::string& graph, const std::string& broker,
                                     std::vector<std::string> more = {}) {
  std::vector<std::string> args{
      plumber::test::paths::exe, "worker", graph, "--node", "sq", "--broker", broker};
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

/// The fields of the line of `table` (a `--stats` table on stderr) for node "sq".
std::vector<std::string> stats_line(const std::string& err, const std::string& table) {
  bool in_table = false;
  for (const auto& line : split_lines(err)) {
    if (line.starts_with(table + " ")) in_table = true;
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

/// The processes a process started (from any of its threads).
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> children;
  std::error_code ignored;
  for (const auto& task :
       fs::directory_iterator("/proc/" + std::to_string(parent) + "/task", ignored)) {
    std::ifstream in(task.path() / "children");
    for (pid_t pid; in >> pid;)
      children.push_back(pid);
  }
  return children;
}

std::vector<std::string> file_lines(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return split_lines(text.str());
}

/// input -> sq (gate_log, remote) -> out, for a host in this process.
json gate_graph(const std::string& broker, const fs::path& dir, json more = json::object()) {
  json sq = {{"id", "sq"},
             {"coroutine", "gate_log"},
             {"params", {{"dir", dir.string()}}},
             {"remote", true}};
  sq.update(more);
  return {
      {"plumber", 1},
      {"name", "rt"},
      {"settings", {{"broker", broker}, {"priorities", 2}}},
      {"nodes",
       {{{"id", "in"}, {"coroutine", "input"}}, sq, {{"id", "out"}, {"coroutine", "identity"}}}},
      {"edges", {{{"from", "in"}, {"to", "sq"}}, {{"from", "sq"}, {"to", "out"}}}}};
}

/// A host embedded in the test (the library's API, as a program would use it),
/// to send requests with priorities and deadlines to real `plumber worker`s.
struct EmbeddedHost {
  plumber::Registry registry = plumber::Registry::with_builtins();
  boost::asio::io_context io;
  plumber::GraphSpec graph;
  std::optional<plumber::Pipeline> pipeline;

  explicit EmbeddedHost(const std::string& file) {
    plumber::load_plugin(plumber::test::paths::test_plugin, registry);
    graph = plumber::load_graph_file(file, registry);
    pipeline.emplace(plumber::Plumber(registry).build(graph, io.get_executor()));
    pipeline->on_output([](plumber::OutputRecord&&) {});
    pipeline->start();
  }
  plumber::ProcessorStats stats(std::string_view node) const {
    for (const auto& s : pipeline->stats()) {
      if (s.node == node) return s;
    }
    return {};
  }
  /// Sends `value` and records how its request ended (its value, or the error's code).
  void send(std::string value, std::uint8_t priority, std::chrono::milliseconds timeout,
            std::map<std::string, std::string>& ended) {
    boost::asio::co_spawn(
        io,
        [this, value, priority, timeout, &ended]() -> boost::asio::awaitable<void> {
          try {
            auto result =
                co_await pipeline->process(json(value), {.timeout = timeout, .priority = priority});
            ended[value] = result.value().get<std::string>();
          } catch (const plumber::ProcessError& e) {
            ended[value] = e.code() == plumber::errc::timed_out ? "timed out" : e.what();
          }
        },
        boost::asio::detached);
  }
  /// Polls `ready` between turns of the host's io_context (a hang guard: false after a minute).
  boost::asio::awaitable<bool> until(std::function<bool()> ready) {
    boost::asio::steady_timer timer(io);
    for (int turn = 0; turn < 6000; ++turn) {
      if (ready()) co_return true;
      timer.expires_after(10ms);
      co_await timer.async_wait(boost::asio::use_awaitable);
    }
    co_return ready();
  }
};

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
  Background worker(
      worker_args(graph, redis.url(), {"--plugin", plumber::test::paths::test_plugin}),
      scratch.dir / "w");
  const ProcessResult got =
      run({"run", graph, "--records", "--plugin", plumber::test::paths::test_plugin});
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
  Background host({plumber::test::paths::exe, "run", graph, "--stats"}, scratch.dir / "host");
  REQUIRE(wait_until([&] { return split_lines(host.out()).size() >= 50; }));
  a.signal(SIGKILL);  // with the entries it had read and not acknowledged
  REQUIRE(host.wait() == 0);
  INFO(host.err());
  const ProcessResult expected = run({"run", local});
  CHECK(split_lines(host.out()).size() == 600);
  CHECK(sorted_lines(host.out()) == sorted_lines(expected.out));
  // b took a's entries over (XAUTOCLAIM): counted as claimed, and as redelivered.
  const auto stats = remote_stats_line(host.err());
  REQUIRE(stats.size() >= 10);
  const long redelivered = std::stol(stats[4]), claimed = std::stol(stats[5]);
  CHECK(claimed >= 1);
  CHECK(redelivered >= claimed);  // every claim is a redelivery, not every redelivery a claim
  CHECK(stats[6] == "0");         // nothing dead-lettered
}

TEST_CASE("Remote.PoisonMessageIsDeadLettered") {
  RedisServer redis;
  Scratch scratch;
  const json remote = {{"claim_idle_ms", 200}, {"max_deliveries", 2}};
  const std::string graph =
      scratch.write("g.json", values_chain(redis.url(), "crash", remote, {"a", "crash", "b"}));
  // One consumer, two worker processes: the pool restarts the one "crash"
  // kills, and the consumer runs the batch again, up to twice in all.
  Background worker(worker_args(graph, redis.url(),
                                {"--procs", "2", "--plugin", plumber::test::paths::test_plugin}),
                    scratch.dir / "w");
  const ProcessResult got =
      run({"run", graph, "--records", "--plugin", plumber::test::paths::test_plugin});
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
  Background host({plumber::test::paths::exe, "run", graph, "--stats"}, scratch.dir / "host");
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
  // A cycle that left anything behind would show after the first one; the
  // sanitizers' builds start each process slowly, and prove the same with fewer.
  for (int cycle = 0; cycle < kStartStopCycles; ++cycle) {
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
  Background host({plumber::test::paths::exe, "run", graph, "--stats"}, scratch.dir / "host");
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
      {"/bin/bash", std::string(plumber::test::paths::source_dir) + "/demos/scale_out/run.sh",
       plumber::test::paths::exe},
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
  encode_failure(failure, 42, "host:1", {.count = 3, .claimed = true, .expired = {7, 9}}, "boom",
                 true);
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
  CHECK(result.claimed);
  CHECK(result.expired == std::vector<std::uint64_t>{7, 9});

  // Time spent at the broker comes off the deadline.
  RedisReply again;
  again.type = RedisReply::Type::array;
  for (std::size_t i = 3; i < args.size(); ++i) {
    RedisReply f;
    f.type = RedisReply::Type::string;
    f.str = args[i];
    again.elements.push_back(std::move(f));
  }
  const RemoteTask late = decode_task(again, 61s);
  CHECK(late.batch[0].deadline < plumber::Clock::now());
}

TEST_CASE("Remote.ProcsIsOneConsumerFeedingAWorkerPool") {
  RedisServer redis;
  Scratch scratch;
  json graph_json = chain(redis.url(), "gate_log", true, 0, 300, 4);
  graph_json["nodes"][1]["params"] = {{"dir", scratch.dir.string()}};
  const std::string graph = scratch.write("g.json", graph_json);
  Background worker(
      worker_args(graph, redis.url(),
                  {"--procs", "3", "--stats", "--plugin", plumber::test::paths::test_plugin}),
      scratch.dir / "w");
  REQUIRE(wait_until([&] { return redis.cli({"SCARD", "plumber:rt:sq:workers"}) == "1\n"; }));
  const ProcessResult got =
      run({"run", graph, "--stats", "--plugin", plumber::test::paths::test_plugin});
  INFO(got.err);
  REQUIRE(got.exit_code == 0);
  CHECK(split_lines(got.out).size() == 300);
  // One consumer in the group, whose three worker processes each ran on_start once.
  CHECK(redis.cli({"SCARD", "plumber:rt:sq:workers"}) == "1\n");
  const std::string consumers = redis.cli({"XINFO", "CONSUMERS", "plumber:rt:sq:tasks", "sq"});
  CHECK(std::count(consumers.begin(), consumers.end(), ':') == 1);  // one host:pid
  const auto starts = file_lines(scratch.dir / "starts");
  CHECK(starts.size() == 3);
  CHECK(std::set<std::string>(starts.begin(), starts.end()).size() == 3);
  CHECK(std::find(starts.begin(), starts.end(), std::to_string(worker.pid())) == starts.end());
  std::vector<std::string> pool;
  for (pid_t pid : children_of(worker.pid()))
    pool.push_back(std::to_string(pid));
  std::sort(pool.begin(), pool.end());
  std::vector<std::string> started = starts;
  std::sort(started.begin(), started.end());
  CHECK(pool == started);

  worker.signal(SIGTERM);
  REQUIRE(worker.wait() == 0);
  INFO(worker.err());
  const auto pool_stats = stats_line(worker.err(), "workers");
  REQUIRE(pool_stats.size() >= 6);
  CHECK(pool_stats[1] == "3");    // procs
  CHECK(pool_stats[2] == "300");  // messages through the pool
  CHECK(pool_stats[4] == "0");    // restarts
}

TEST_CASE("Remote.KilledPoolProcessIsRestartedAndItsBatchRunAgain") {
  RedisServer redis;
  Scratch scratch;
  const json remote = {{"max_deliveries", 3}};
  const std::string local =
      scratch.write("local.json", chain(redis.url(), "sum_squares", nullptr, 1'000'000, 1'000'600));
  const std::string graph =
      scratch.write("g.json", chain(redis.url(), "sum_squares", remote, 1'000'000, 1'000'600));
  Background worker(worker_args(graph, redis.url(), {"--procs", "2", "--stats"}),
                    scratch.dir / "w");
  REQUIRE(wait_until([&] { return redis.cli({"SCARD", "plumber:rt:sq:workers"}) == "1\n"; }));
  Background host({plumber::test::paths::exe, "run", graph, "--stats"}, scratch.dir / "host");
  REQUIRE(wait_until([&] { return split_lines(host.out()).size() >= 50; }));
  const auto pool = children_of(worker.pid());
  REQUIRE(pool.size() == 2);
  ::kill(pool[0], SIGKILL);  // mid-batch, almost surely: the pool is kept busy
  REQUIRE(host.wait() == 0);
  INFO(host.err());
  const ProcessResult expected = run({"run", local});
  CHECK(split_lines(host.out()).size() == 600);
  CHECK(sorted_lines(host.out()) == sorted_lines(expected.out));
  // Run again by the consumer, not the broker: no entry was delivered twice.
  const auto stats = remote_stats_line(host.err());
  REQUIRE(stats.size() >= 10);
  CHECK(stats[4] == "0");  // redelivered
  CHECK(stats[5] == "0");  // claimed

  worker.signal(SIGTERM);
  REQUIRE(worker.wait() == 0);
  INFO(worker.err());
  const auto pool_stats = stats_line(worker.err(), "workers");
  REQUIRE(pool_stats.size() >= 6);
  CHECK(pool_stats[4] == "1");  // restarts
}

TEST_CASE("Remote.PoisonMessageKillsOneConsumerThenIsDeadLettered") {
  // In-process consumers: "crash" kills the consumer that runs it; the other
  // claims the entry, started max_deliveries (1) times already, and
  // dead-letters it. (Last, so that no entry read ahead behind it is claimed
  // too: the counts are exact.)
  RedisServer redis;
  Scratch scratch;
  const json remote = {{"claim_idle_ms", 200}, {"max_deliveries", 1}};
  const std::string graph =
      scratch.write("g.json", values_chain(redis.url(), "crash", remote, {"a", "b", "crash"}));
  Background a(worker_args(graph, redis.url(), {"--plugin", plumber::test::paths::test_plugin}),
               scratch.dir / "a");
  Background b(worker_args(graph, redis.url(), {"--plugin", plumber::test::paths::test_plugin}),
               scratch.dir / "b");
  REQUIRE(wait_until([&] { return redis.cli({"SCARD", "plumber:rt:sq:workers"}) == "2\n"; }));
  const ProcessResult got =
      run({"run", graph, "--records", "--stats", "--plugin", plumber::test::paths::test_plugin});
  INFO(got.err);
  CHECK(got.exit_code == 3);
  CHECK(got.err.find("started 1 times without a result (max_deliveries 1)") != std::string::npos);
  CHECK(split_lines(got.out).size() == 2);
  CHECK(redis.cli({"XLEN", "plumber:rt:sq:dead"}) == "1\n");
  const auto stats = remote_stats_line(got.err);
  REQUIRE(stats.size() >= 10);
  CHECK(stats[4] == "1");  // redelivered
  CHECK(stats[5] == "1");  // claimed
  CHECK(stats[6] == "1");  // dead
}

TEST_CASE("Remote.WhenOnARemoteNode") {
  // Values `when` rejects pass on unchanged, on the host; the others run remotely.
  RedisServer redis;
  Scratch scratch;
  json local_json = chain(redis.url(), "sum_squares", nullptr, 0, 40);
  local_json["nodes"][1]["when"] = "is_even";
  json remote_json = local_json;
  remote_json["nodes"][1]["remote"] = true;
  const std::string local = scratch.write("local.json", local_json);
  const std::string graph = scratch.write("g.json", remote_json);
  Background worker(worker_args(graph, redis.url()), scratch.dir / "w");
  const ProcessResult expected = run({"run", local});
  REQUIRE(expected.exit_code == 0);
  const ProcessResult got = run({"run", graph, "--stats"});
  INFO(got.err);
  REQUIRE(got.exit_code == 0);
  CHECK(sorted_lines(got.out) == sorted_lines(expected.out));
  const auto stats = remote_stats_line(got.err);
  REQUIRE(stats.size() >= 10);
  CHECK(stats[2] == "20");  // only the even ones went to the worker
}

TEST_CASE("Remote.BlobsGoThereAndBackAsBinaryFields") {
  // Every byte value, through a remote identity: the bytes that come back are
  // the file's, and a remote sha256 reads the blob it was sent.
  RedisServer redis;
  Scratch scratch;
  fs::create_directories(scratch.dir / "in");
  std::string bytes;
  for (int i = 0; i < 3 * 256; ++i)
    bytes.push_back(static_cast<char>(i % 256));
  std::ofstream(scratch.dir / "in" / "all.bin", std::ios::binary) << bytes;
  json graph_json = {{"plumber", 1},
                     {"name", "rt"},
                     {"settings", {{"broker", redis.url()}}},
                     {"nodes",
                      {{{"id", "n"},
                        {"coroutine", "files"},
                        {"params", {{"path", (scratch.dir / "in").string()}}}},
                       {{"id", "sq"}, {"coroutine", "identity"}, {"remote", true}},
                       {{"id", "hash"}, {"coroutine", "sha256"}, {"remote", true}},
                       {{"id", "out"}, {"coroutine", "identity"}}}},
                     {"edges",
                      {{{"from", "n"}, {"to", "sq"}},
                       {{"from", "sq"}, {"to", "out"}},
                       {{"from", "n"}, {"to", "hash"}}}}};
  const std::string graph = scratch.write("g.json", graph_json);
  json local_json = graph_json;
  local_json["nodes"][1].erase("remote");
  local_json["nodes"][2].erase("remote");
  const std::string local = scratch.write("local.json", local_json);
  Background sq(worker_args(graph, redis.url()), scratch.dir / "w1");
  Background hash({plumber::test::paths::exe, "worker", graph, "--node", "hash"},
                  scratch.dir / "w2");
  fs::create_directories(scratch.dir / "blobs");
  const ProcessResult got =
      run({"run", graph, "--blobs-dir", (scratch.dir / "blobs").string(), "--records"});
  INFO(got.err);
  REQUIRE(got.exit_code == 0);
  const ProcessResult expected = run({"run", local, "--records"});
  std::string hash_value;
  for (const auto& line : split_lines(expected.out)) {
    const json record = json::parse(line);
    if (record["node"] == "hash") hash_value = record["value"].get<std::string>();
  }
  REQUIRE(!hash_value.empty());
  bool hashed = false;
  for (const auto& line : split_lines(got.out)) {
    const json record = json::parse(line);
    if (record["node"] == "hash") {
      CHECK(record["value"] == hash_value);
      hashed = true;
    }
  }
  CHECK(hashed);
  // Both sinks keep the blob (sha256 changes only the value).
  int written = 0;
  for (const auto& f : fs::directory_iterator(scratch.dir / "blobs")) {
    std::ifstream in(f.path(), std::ios::binary);
    const std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(back == bytes);
    ++written;
  }
  CHECK(written == 2);
}

TEST_CASE("Remote.HighPriorityOvertakesABacklogAtTheBroker") {
  RedisServer redis;
  Scratch scratch;
  const std::string graph = scratch.write("g.json", gate_graph(redis.url(), scratch.dir));
  std::ofstream(scratch.dir / "hold") << "";
  Background worker(
      worker_args(graph, redis.url(), {"--plugin", plumber::test::paths::test_plugin}),
      scratch.dir / "w");
  EmbeddedHost host(graph);
  std::map<std::string, std::string> ended;
  auto ran = [&] { return file_lines(scratch.dir / "log"); };
  auto length = [&](const std::string& key) { return redis.cli({"XLEN", key}); };
  boost::asio::co_spawn(
      host.io,
      [&]() -> boost::asio::awaitable<void> {
        host.send("hold", 0, 60s, ended);
        CHECK(co_await host.until([&] { return !ran().empty(); }));  // the worker is busy
        for (const char* low : {"N1", "N2", "N3", "N4"})
          host.send(low, 0, 60s, ended);
        CHECK(co_await host.until([&] { return length("plumber:rt:sq:tasks") == "5\n"; }));
        host.send("P", 1, 60s, ended);
        CHECK(co_await host.until([&] { return length("plumber:rt:sq:tasks:1") == "1\n"; }));
        fs::remove(scratch.dir / "hold");
        CHECK(co_await host.until([&] { return ended.size() == 6; }));
        host.pipeline->end_input();
      },
      boost::asio::detached);
  host.io.run();
  const auto order = ran();
  INFO(json(order).dump());
  REQUIRE(order.size() == 6);
  CHECK(order[0] == "\"hold\"");
  // P was sent last; it runs before every low message still at the broker
  // (the worker may have read one ahead while it was busy).
  const auto at = [&](const std::string& v) {
    return std::find(order.begin(), order.end(), "\"" + v + "\"") - order.begin();
  };
  CHECK(at("P") <= 2);
  for (const char* low : {"N2", "N3", "N4"})
    CHECK(at("P") < at(low));
  CHECK(ended["P"] == "P");
  worker.signal(SIGTERM);
  CHECK(worker.wait() == 0);
}

TEST_CASE("Remote.DeadlinePassedAtTheBrokerIsNeverRun") {
  RedisServer redis;
  Scratch scratch;
  // Batches of two: ["hold", "x"] holds the worker while ["A", "B"] waits at
  // the broker; A's deadline passes there, B's does not.
  const std::string graph = scratch.write(
      "g.json",
      gate_graph(redis.url(), scratch.dir, {{"batch_size", 2}, {"batch_timeout_ms", 60000}}));
  std::ofstream(scratch.dir / "hold") << "";
  Background worker(
      worker_args(graph, redis.url(), {"--plugin", plumber::test::paths::test_plugin}),
      scratch.dir / "w");
  EmbeddedHost host(graph);
  std::map<std::string, std::string> ended;
  auto ran = [&] { return file_lines(scratch.dir / "log"); };
  auto tasks = [&] { return redis.cli({"XLEN", "plumber:rt:sq:tasks"}); };
  boost::asio::co_spawn(
      host.io,
      [&]() -> boost::asio::awaitable<void> {
        host.send("hold", 0, 60s, ended);
        host.send("x", 0, 60s, ended);
        CHECK(co_await host.until([&] { return !ran().empty(); }));
        host.send("A", 0, 300ms, ended);
        host.send("B", 0, 60s, ended);
        CHECK(co_await host.until([&] { return tasks() == "2\n"; }));
        CHECK(co_await host.until([&] { return ended.contains("A"); }));
        // The host gave up on A at its deadline; a little more, so that the
        // broker's clock is surely past it too.
        boost::asio::steady_timer margin(host.io, 50ms);
        co_await margin.async_wait(boost::asio::use_awaitable);
        fs::remove(scratch.dir / "hold");
        CHECK(co_await host.until([&] { return ended.size() == 4 && tasks() == "0\n"; }));
        host.pipeline->end_input();
      },
      boost::asio::detached);
  host.io.run();
  CHECK(ended["A"] == "timed out");
  CHECK(ended["B"] == "B");
  CHECK(ran() == std::vector<std::string>{"\"hold\"", "\"x\"", "\"B\""});
  CHECK(host.stats("sq").expired == 1);
  worker.signal(SIGTERM);
  CHECK(worker.wait() == 0);
}
