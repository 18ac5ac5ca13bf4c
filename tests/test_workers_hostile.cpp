// Worker processes on bad days (issue 12): a step that runs out of memory, a
// worker that is stuck in a step. Label "runtime".
#include <sys/wait.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>

#include "plumber/all.hpp"
#include "test_support.hpp"
#include "worker_coroutines.hpp"

using namespace plumber;
namespace asio = boost::asio;

namespace {

/// One pipeline of the worker test coroutines; its outputs collected.
struct Run {
  Registry registry = test::worker_test_registry();
  asio::io_context io;
  GraphSpec graph;
  std::optional<Pipeline> pipeline;
  std::vector<json> values;
  std::vector<std::string> errors;

  explicit Run(const std::string& node, int count) {
    graph = parse_graph(R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "range", "params": {"stop": )" +
                            std::to_string(count) + "}}, " + node + R"(,
        {"id": "out", "coroutine": "identity"}],
      "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})",
                        registry);
    pipeline.emplace(Plumber(registry).build(graph, io.get_executor()));
    pipeline->on_output([this](OutputRecord&& r) {
      if (r.kind == OutputRecord::Kind::value) {
        values.push_back(std::move(r.value));
      } else {
        errors.push_back(r.error);
      }
    });
    pipeline->start();
    io.run();
    REQUIRE(pipeline->done());
  }

  WorkerPoolStats pool() const {
    for (const auto& s : pipeline->stats()) {
      if (s.node == "w") return s.workers.value();
    }
    FAIL("no node w");
    return {};
  }
};

bool no_children() {
  return ::waitpid(-1, nullptr, WNOHANG) == -1 && errno == ECHILD;
}

}  // namespace

TEST_CASE("Workers.BadAllocReplacesTheWorker") {
  // A worker whose step threw std::bad_alloc was kept, and every later message on it failed.
  Run run(R"({"id": "w", "coroutine": "bad_alloc_on", "params": {"value": 3}, "procs": 1,
              "concurrency": 1})",
          10);
  std::sort(run.values.begin(), run.values.end());
  CHECK(run.values == std::vector<json>{0, 1, 2, 4, 5, 6, 7, 8, 9});
  REQUIRE(run.errors.size() == 1);
  CHECK(run.errors[0] ==
        "out of memory (std::bad_alloc) in the step; its worker process is replaced");
  CHECK(run.pool().restarts == 1);
  CHECK(no_children());
}

TEST_CASE("Workers.StuckStepIsKilledAndRetried") {
  // A step that never returned held its worker, and the run, for ever.
  Run run(R"({"id": "w", "coroutine": "hang_on", "params": {"value": 3}, "procs": 1,
              "concurrency": 2, "kill_after_ms": 100, "retries": 1})",
          6);
  std::sort(run.values.begin(), run.values.end());
  CHECK(run.values == std::vector<json>{0, 1, 2, 4, 5});
  REQUIRE(run.errors.size() == 1);
  CHECK(run.errors[0].find("of node \"w\" was killed: its step ran longer than kill_after_ms "
                           "(100 ms)") != std::string::npos);
  CHECK(run.pool().restarts == 2);  // tried twice
  CHECK(no_children());
}

TEST_CASE("Workers.TimeoutKillsTheStuckWorker") {
  // timeout_ms reported the message, but retries went back to the same stuck worker.
  Run run(R"({"id": "w", "coroutine": "hang_on", "params": {"value": 2}, "procs": 1,
              "concurrency": 1, "timeout_ms": 100, "retries": 1})",
          5);
  std::sort(run.values.begin(), run.values.end());
  CHECK(run.values == std::vector<json>{0, 1, 3, 4});
  REQUIRE(run.errors.size() == 1);
  CHECK(run.errors[0].starts_with("timed out after 100 ms in worker 0 (pid "));
  CHECK(run.pool().restarts >= 1);
  CHECK(no_children());
}

TEST_CASE("Workers.StoppedWorkerIsKilled") {
  // A worker stopped by SIGSTOP was never killed nor restarted.
  Run run(R"({"id": "w", "coroutine": "stop_on", "params": {"value": 1}, "procs": 1,
              "kill_after_ms": 100})",
          4);
  std::sort(run.values.begin(), run.values.end());
  CHECK(run.values == std::vector<json>{0, 2, 3});
  REQUIRE(run.errors.size() == 1);
  CHECK(run.errors[0].find("was killed: its step ran longer than kill_after_ms") !=
        std::string::npos);
  CHECK(no_children());
}

TEST_CASE("GraphSpec.KillAfterNeedsProcs") {
  const Registry registry = test::worker_test_registry();
  try {
    parse_graph(R"({"plumber": 1, "nodes": [{"id": "s", "coroutine": "range",
      "params": {"stop": 1}}, {"id": "w", "coroutine": "identity", "kill_after_ms": 5}],
      "edges": [{"from": "s", "to": "w"}]})",
                registry, "g.json");
    FAIL("kill_after_ms without procs was accepted");
  } catch (const GraphError& e) {
    CHECK(std::string(e.what()) ==
          "g.json: /nodes/1/kill_after_ms: kill_after_ms applies to worker processes only (add "
          "\"procs\", or use \"timeout_ms\")");
  }
}
