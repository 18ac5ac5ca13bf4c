// The message envelope (id, deadline, priority, trace) across every way of
// running a step, and what a `procs` node owes its messages: priorities at any
// concurrency, timeout_ms counted from the step's start, parallel start.
#include <unistd.h>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "plumber/all.hpp"
#include "test_support.hpp"
#include "worker_coroutines.hpp"

using namespace plumber;
namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

struct Run {
  Registry registry = test::worker_test_registry();
  asio::io_context io;
  GraphSpec graph;
  std::optional<Pipeline> pipeline;
  std::vector<OutputRecord> records;

  Pipeline& build(const std::string& text) {
    graph = parse_graph(text, registry);
    pipeline.emplace(Plumber(registry).build(graph, io.get_executor()));
    pipeline->on_output([this](OutputRecord&& r) { records.push_back(std::move(r)); });
    return *pipeline;
  }
  ProcessorStats stats(std::string_view node) const {
    for (const auto& s : pipeline->stats()) {
      if (s.node == node) return s;
    }
    FAIL("no node " << node);
    return {};
  }
};

/// input -> slow (the step under test, STEP as JSON fields) -> after -> out.
std::string slow_then_after(const std::string& step) {
  return R"({"plumber": 1, "nodes": [
      {"id": "in", "coroutine": "input"},
      {"id": "slow", "coroutine": "spin", "params": {"us": 300000})" +
         step + R"(},
      {"id": "after", "coroutine": "identity"},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "slow"}, {"from": "slow", "to": "after"},
              {"from": "after", "to": "out"}]})";
}

}  // namespace

TEST_CASE("Workers.DeadlineSurvivesEveryRunner") {
  // The request times out while `slow` runs it; whatever ran `slow`, the next
  // step skips the message instead of computing it for nobody.
  for (const std::string step : {R"(, "procs": 1)", R"(, "threads": 1)", R"(, "concurrency": 1)"}) {
    CAPTURE(step);
    Run r;
    Pipeline& p = r.build(slow_then_after(step));
    p.start();
    std::optional<std::error_code> code;
    asio::co_spawn(
        r.io,
        [&]() -> asio::awaitable<void> {
          try {
            co_await p.process(json(1), {.timeout = 100ms});
          } catch (const ProcessError& e) {
            code = e.code();
          }
          p.end_input();
        },
        asio::detached);
    r.io.run();
    REQUIRE(code);
    CHECK(*code == errc::timed_out);
    CHECK(r.stats("after").expired == 1);
    CHECK(r.stats("out").received == 0);
  }
}

TEST_CASE("Workers.EnvelopeComesBackFromWorkers") {
  // Priority and deadline survive a worker step: a high-priority request still
  // overtakes queued normal ones at the node after it.
  Run r;
  Pipeline& p = r.build(R"({"plumber": 1, "settings": {"priorities": 2}, "nodes": [
      {"id": "in", "coroutine": "input"},
      {"id": "w", "coroutine": "identity", "procs": 1},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "w"}, {"from": "w", "to": "out"}]})");
  p.start();
  ProcessResult result;
  asio::co_spawn(
      r.io,
      [&]() -> asio::awaitable<void> {
        result = co_await p.process(json("x"), {.timeout = 10s, .priority = 1});
        p.end_input();
      },
      asio::detached);
  r.io.run();
  CHECK(result.value() == "x");
}

TEST_CASE("Workers.PrioritiesAtAProcsNodeOfDefaultConcurrency") {
  // Aqueduct's example through a worker step at its default concurrency: three
  // normal requests, then a high-priority one, complete as N, P, N, N.
  Run r;
  Pipeline& p = r.build(R"({"plumber": 1, "settings": {"priorities": 2}, "nodes": [
      {"id": "in", "coroutine": "input"},
      {"id": "slow", "coroutine": "spin", "params": {"us": 200000}, "procs": 1},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "slow"}, {"from": "slow", "to": "out"}]})");
  CHECK(r.graph.nodes[1].concurrency > 1);
  p.start();
  std::vector<std::string> completed;
  asio::co_spawn(
      r.io,
      [&]() -> asio::awaitable<void> {
        auto executor = co_await asio::this_coro::executor;
        std::vector<std::future<void>> calls;
        auto call = [&](std::string name, std::uint8_t priority) {
          calls.push_back(asio::co_spawn(
              executor,
              [&, name, priority]() -> asio::awaitable<void> {
                co_await p.process(json(name), {.timeout = 60s, .priority = priority});
                completed.push_back(name);
              },
              asio::use_future));
        };
        asio::steady_timer pause(executor);
        call("N1", 0);
        call("N2", 0);
        call("N3", 0);
        // N1 is in the worker and N2, N3 wait for it before P arrives.
        pause.expires_after(50ms);
        co_await pause.async_wait(asio::use_awaitable);
        call("P", 1);
        while (completed.size() < 4) {
          pause.expires_after(5ms);
          co_await pause.async_wait(asio::use_awaitable);
        }
        p.end_input();
      },
      asio::detached);
  r.io.run();
  CHECK(completed == std::vector<std::string>{"N1", "P", "N2", "N3"});
}

TEST_CASE("Workers.TimeoutCountsFromTheStepsStart") {
  // Eight 100 ms messages in one worker with a 600 ms limit: each is within its
  // limit once the worker starts it, however long it waited before (the last
  // one 700 ms). The margin is wide: a loaded machine may be slow to schedule
  // the worker.
  Run r;
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1, 2, 3, 4, 5, 6, 7, 8]}},
      {"id": "w", "coroutine": "spin", "params": {"us": 100000}, "procs": 1, "timeout_ms": 600},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})");
  p.start();
  r.io.run();
  std::vector<json> values;
  for (const auto& record : r.records) {
    const bool is_value = record.kind == OutputRecord::Kind::value;
    CHECK_MESSAGE(is_value, record.error);
    values.push_back(record.value);
  }
  CHECK(values == std::vector<json>{1, 2, 3, 4, 5, 6, 7, 8});
}

TEST_CASE("Workers.NodesStartInParallel") {
  // Two procs nodes whose on_start takes 1 s each: their on_starts overlap.
  const auto log = std::filesystem::temp_directory_path() /
                   ("plumber-start-" + std::to_string(::getpid()) + ".log");
  std::filesystem::remove(log);
  Run r;
  const std::string path = log.string();
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1]}},
      {"id": "a", "coroutine": "start_logs", "params": {"ms": 1000, "path": ")" +
                        path + R"("}, "procs": 1},
      {"id": "b", "coroutine": "start_logs", "params": {"ms": 1000, "path": ")" +
                        path + R"("}, "procs": 1},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "out"}]})");
  p.start();
  r.io.run();
  std::ifstream in(log);
  long long begin1 = 0, end1 = 0, begin2 = 0, end2 = 0;
  const bool read = static_cast<bool>(in >> begin1 >> end1 >> begin2 >> end2);
  REQUIRE(read);
  std::filesystem::remove(log);
  // Each began before the other ended.
  CHECK(begin2 < end1);
  CHECK(begin1 < end2);
  CHECK(r.records.size() == 1);
}
