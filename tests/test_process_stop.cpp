// Pipeline::stop while requests are in flight: what a caller of
// Pipeline::process gets, and what on_output must not see. Label "runtime".
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "plumber/all.hpp"
#include "plumber/error.hpp"
#include "test_support.hpp"

using plumber::json;

TEST_CASE("Process.StopSendsNoCancelledRecordsOfRequests") {
  // The docs promise: values and errors of requested messages go to their caller
  // only, never to on_output. After stop(false), on_output got `cancelled` records.
  namespace asio = boost::asio;
  using namespace std::chrono_literals;
  const auto registry = plumber::Registry::with_builtins();
  asio::io_context io;
  const auto graph = plumber::parse_graph(R"({"plumber": 1,
    "nodes": [{"id": "in", "coroutine": "input"},
              {"id": "a", "coroutine": "sleep", "params": {"ms": 600000}, "concurrency": 2},
              {"id": "b", "coroutine": "sleep", "params": {"ms": 600000}},
              {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "a"}, {"from": "in", "to": "b"}, {"from": "a", "to": "out"},
              {"from": "b", "to": "out"}]})",
                                          registry);
  plumber::Pipeline pipeline = plumber::Plumber(registry).build(graph, io.get_executor());
  std::vector<plumber::OutputRecord> streamed;
  pipeline.on_output([&](plumber::OutputRecord&& r) { streamed.push_back(std::move(r)); });
  pipeline.start();
  std::vector<std::string> errors;
  for (int i = 0; i < 5; ++i) {
    // Some time out while inside the graph, some are still running at stop().
    const auto timeout = i % 2 ? std::chrono::milliseconds(20) : std::chrono::milliseconds(60s);
    pipeline.async_process(json(i), plumber::ProcessOptions{timeout, 0},
                           [&](boost::system::error_code ec, plumber::ProcessResult result) {
                             errors.push_back(ec ? result.error : "no error");
                           });
  }
  // Stop once every request is inside the graph (polling the stats on the loop).
  asio::steady_timer timer(io);
  std::function<void()> poll = [&] {
    std::uint64_t received = 0;
    for (const auto& s : pipeline.stats())
      received += s.node == "a" || s.node == "b" ? s.received : 0;
    if (received >= 3 && errors.size() >= 2) {  // a holds 2, b 1; two requests timed out
      pipeline.stop(false);
      return;
    }
    timer.expires_after(1ms);
    timer.async_wait([&](boost::system::error_code) { poll(); });
  };
  poll();
  io.run();
  CHECK(pipeline.done());
  CHECK(errors.size() == 5);
  for (const auto& r : streamed)
    CHECK_MESSAGE(
        false, "on_output got a record of kind " << static_cast<int>(r.kind) << " for id " << r.id);
}

namespace {
/// Sends `requests` process() calls (every third with a 5 ms timeout), lets the
/// graph run for `after`, then stop(graceful) on an io_context of `threads`
/// threads. Returns what on_output received: nothing is expected, since every
/// message is a request.
std::vector<std::string> records_after_stop(const char* graph_text, bool graceful, int threads,
                                            int requests, std::chrono::milliseconds after) {
  namespace asio = boost::asio;
  const auto registry = plumber::Registry::with_builtins();
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  const auto graph = plumber::parse_graph(graph_text, registry);
  plumber::Pipeline pipeline = plumber::Plumber(registry).build(graph, io.get_executor());
  std::vector<std::string> streamed;  // on the strand only
  pipeline.on_output([&](plumber::OutputRecord&& r) {
    streamed.push_back("kind " + std::to_string(static_cast<int>(r.kind)) + " id " +
                       std::to_string(r.id) + " at " + std::string(r.node) + ": " + r.error);
  });
  pipeline.start();
  for (int i = 0; i < requests; ++i) {
    const auto timeout = i % 3 == 0 ? std::chrono::milliseconds(5) : std::chrono::minutes(1);
    pipeline.async_process(json(i), plumber::ProcessOptions{timeout, 0},
                           [](boost::system::error_code, plumber::ProcessResult) {});
  }
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i)
    pool.emplace_back([&] { io.run(); });
  std::this_thread::sleep_for(after);
  pipeline.stop(graceful);
  pipeline.wait();
  work.reset();
  for (auto& t : pool)
    t.join();
  return streamed;
}
}  // namespace

TEST_CASE("Process.StopSendsNoRecordsOfRequestsFromOtherBranches") {
  // After stop(false), on_output got records of requested messages: an error
  // (deadline passed) from a branch that had not yet seen the cancellation when
  // another branch had cancelled the request and forgotten it; a `cancelled`
  // record from a zip that held only the `dropped` parts of an id that had
  // failed upstream. And a `threads` step cancelled while it ran threw out of
  // its pool thread (std::terminate). Timing decides which message is where:
  // the sweep runs each graph several times.
  const char* graphs[] = {
      // fan-out: a batching branch and a direct sink
      R"({"plumber": 1, "nodes": [{"id": "in", "coroutine": "input"},
        {"id": "a", "coroutine": "sleep", "params": {"ms": 2}, "batch_size": 4,
         "batch_timeout_ms": 3},
        {"id": "o1", "coroutine": "identity"}, {"id": "o2", "coroutine": "identity"}],
        "edges": [{"from": "in", "to": "a"}, {"from": "in", "to": "o1"},
                  {"from": "a", "to": "o2"}]})",
      // a zip of an async branch and a failing one on a thread pool
      R"({"plumber": 1, "nodes": [{"id": "in", "coroutine": "input"},
        {"id": "a", "coroutine": "sleep", "params": {"ms": 2}, "concurrency": 3},
        {"id": "b", "coroutine": "upper", "threads": 2},
        {"id": "z", "coroutine": "identity", "join": "zip"}],
        "edges": [{"from": "in", "to": "a"}, {"from": "in", "to": "b"}, {"from": "a", "to": "z"},
                  {"from": "b", "to": "z"}]})",
  };
  for (int round = 0; round < 8; ++round) {
    for (const char* text : graphs) {
      for (bool graceful : {false, true}) {
        for (int threads : {1, 2}) {
          const auto records = records_after_stop(text, graceful, threads, 300,
                                                  std::chrono::milliseconds(round % 4 * 3));
          CAPTURE(graceful);
          CAPTURE(threads);
          for (const auto& record : records)
            FAIL_CHECK("on_output got " << record);
        }
      }
    }
  }
}
