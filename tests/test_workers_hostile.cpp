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
