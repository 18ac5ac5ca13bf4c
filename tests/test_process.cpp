// Request/response through a running pipeline (Pipeline::process and
// async_process) and priority lanes. Label "runtime".
//
// Steps that must hold a message wait on a gate the test opens once the queue
// it watches is full: no test sleeps to synchronise or asserts on wall-clock time.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
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

using namespace plumber;
namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

/// Holds every message of the steps that wait on it until open() is called.
/// Used from the pipeline's strand only.
class Gate {
 public:
  asio::awaitable<void> pass() {
    if (open_) co_return;
    asio::steady_timer timer(co_await asio::this_coro::executor,
                             asio::steady_timer::time_point::max());
    waiting_.push_back(&timer);
    try {
      co_await timer.async_wait(asio::use_awaitable);
    } catch (const boost::system::system_error&) {
      // cancelled by open(), or by the pipeline's stop
    }
    std::erase(waiting_, &timer);
    if (!open_) throw std::runtime_error("gate: cancelled");
  }
  void open() {
    open_ = true;
    for (auto* timer : waiting_)
      timer->cancel();
  }

 private:
  bool open_ = false;
  std::vector<asio::steady_timer*> waiting_;
};

/// A registry with test steps, an io_context and one pipeline.
struct Fixture {
  Registry registry = Registry::with_builtins();
  asio::io_context io;
  Gate gate;
  std::vector<json> gate_order;  // values in the order the gated step took them
  std::vector<OutputRecord> streamed;
  GraphSpec graph;
  std::optional<Pipeline> pipeline;

  Fixture() {
    registry.add_function("double", [](const json& v) { return json(v.get<int>() * 2); });
    registry.add_function("fail_on_13", [](const json& v) -> json {
      if (v == 13) throw std::runtime_error("13 is unlucky");
      return v;
    });
    registry.add_async("gated", [this](json value, const json&) -> asio::awaitable<json> {
      gate_order.push_back(value);
      co_await gate.pass();
      co_return value;
    });
    CoroutineInfo evens;
    evens.name = "evens";
    evens.description = "passes even integers only";
    evens.make_transform = [](const json&) {
      struct Evens final : Transform {
        void process(std::span<Message> batch, std::vector<Message>& out) override {
          for (Message& m : batch) {
            if (m.value.get<int>() % 2 == 0) out.push_back(std::move(m));
          }
        }
      };
      return std::make_unique<Evens>();
    };
    registry.add(std::move(evens));
  }

  Pipeline& build(std::string_view text) {
    graph = parse_graph(text, registry);
    pipeline.emplace(Plumber(registry).build(graph, io.get_executor()));
    pipeline->on_output([this](OutputRecord&& r) { streamed.push_back(std::move(r)); });
    pipeline->start();
    return *pipeline;
  }

  /// Runs `body` as a coroutine, then ends the input and runs until the pipeline is done.
  template <class Body>
  void run(Body body, int threads = 1) {
    asio::co_spawn(io, std::move(body), [this](std::exception_ptr error) {
      pipeline->end_input();
      if (error) std::rethrow_exception(error);
    });
    std::vector<std::thread> extra;
    for (int i = 1; i < threads; ++i)
      extra.emplace_back([this] { io.run(); });
    io.run();
    for (auto& t : extra)
      t.join();
    REQUIRE(pipeline->done());
  }

  std::uint64_t queue_depth(const std::string& node) const {
    for (const auto& s : pipeline->stats()) {
      if (s.node == node) return s.queue_depth;
    }
    FAIL("no node " << node);
    return 0;
  }

  /// Waits, polling every millisecond, until `condition` holds. The conditions
  /// capture only references: g++ 12 destroys a co_await argument's temporaries
  /// twice, which is harmless only for trivially destructible ones.
  template <class Condition>
  static asio::awaitable<void> until(Condition condition) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    while (!condition()) {
      timer.expires_after(1ms);
      co_await timer.async_wait(asio::use_awaitable);
    }
  }
  /// Waits until `node` holds `depth` queued messages.
  asio::awaitable<void> until_queued(const char* node, std::uint64_t depth) {
    co_await until([this, node, depth] { return queue_depth(node) >= depth; });
  }
};

constexpr const char* kDoubleGraph = R"({"plumber": 1, "name": "double",
  "nodes": [{"id": "in", "coroutine": "input"},
            {"id": "dbl", "coroutine": "double"},
            {"id": "out", "coroutine": "identity"}],
  "edges": [{"from": "in", "to": "dbl"}, {"from": "dbl", "to": "out"}]})";

}  // namespace

TEST_CASE("Process.ResolvesWithWhatTheSinkEmitted") {
  Fixture f;
  Pipeline& pipeline = f.build(kDoubleGraph);
  json result;
  f.run([&]() -> asio::awaitable<void> {
    ProcessResult r = co_await pipeline.process(json(21), 5s);
    REQUIRE(r.outputs.size() == 1);
    CHECK(r.outputs[0].node == "out");
    result = r.value();
  });
  CHECK(result == json(42));
  CHECK(f.streamed.empty());  // a request's values go to its caller only
}

TEST_CASE("Process.AllValuesWhenSeveralSinksEmit") {
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1,
    "nodes": [{"id": "in", "coroutine": "input"},
              {"id": "up", "coroutine": "upper"},
              {"id": "rev", "coroutine": "reverse"},
              {"id": "both", "coroutine": "concat", "join": "zip"},
              {"id": "same", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "up"}, {"from": "in", "to": "rev"},
              {"from": "up", "to": "both"}, {"from": "rev", "to": "both"},
              {"from": "in", "to": "same"}]})");
  std::vector<std::string> got;
  json value;
  f.run([&]() -> asio::awaitable<void> {
    ProcessResult r = co_await pipeline.process(json("abc"), 5s);
    for (const auto& record : r.outputs)
      got.push_back(std::string(record.node) + "=" + record.value.get<std::string>());
    value = r.value();
  });
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<std::string>{"both=ABCcba", "same=abc"});
  CHECK(value.is_array());
  CHECK(value.size() == 2);
}

TEST_CASE("Process.NothingEmittedGivesNull") {
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1,
    "nodes": [{"id": "in", "coroutine": "input"}, {"id": "even", "coroutine": "evens"}],
    "edges": [{"from": "in", "to": "even"}]})");
  json odd = "unset";
  json even;
  f.run([&]() -> asio::awaitable<void> {
    ProcessResult r = co_await pipeline.process(json(3), 5s);
    odd = r.value();
    ProcessResult r2 = co_await pipeline.process(json(4), 5s);
    even = r2.value();
  });
  CHECK(odd.is_null());
  CHECK(even == json(4));
}

TEST_CASE("Process.StepErrorNamesTheNode") {
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1,
    "nodes": [{"id": "in", "coroutine": "input"}, {"id": "picky", "coroutine": "fail_on_13"},
              {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "picky"}, {"from": "picky", "to": "out"}]})");
  std::optional<errc> code;
  std::string node, what;
  json fine;
  f.run([&]() -> asio::awaitable<void> {
    try {
      co_await pipeline.process(json(13), 5s);
    } catch (const ProcessError& e) {
      code = e.code();
      node = e.node();
      what = e.what();
    }
    ProcessResult r = co_await pipeline.process(json(14), 5s);  // the pipeline goes on
    fine = r.value();
  });
  REQUIRE(code);
  CHECK(*code == errc::step_failed);
  CHECK(node == "picky");
  CHECK(what == "node \"picky\": 13 is unlucky");
  CHECK(fine == json(14));
  CHECK(f.streamed.empty());
}

TEST_CASE("Process.TimeoutCancelsTheMessageInsideTheGraph") {
  Fixture f;
  // The step would hold the message forever: only the deadline can take it out.
  Pipeline& pipeline = f.build(R"({"plumber": 1,
    "nodes": [{"id": "in", "coroutine": "input"}, {"id": "hold", "coroutine": "gated"},
              {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "hold"}, {"from": "hold", "to": "out"}]})");
  std::optional<errc> code;
  f.run([&]() -> asio::awaitable<void> {
    try {
      co_await pipeline.process(json("late"), 20ms);
    } catch (const ProcessError& e) {
      code = e.code();
    }
  });
  REQUIRE(code);
  CHECK(*code == errc::timed_out);
  // The step was interrupted at the deadline (the gate never opened), and nothing
  // reached the sink or the output stream.
  const auto stats = pipeline.stats();
  CHECK(stats[1].node == "hold");
  CHECK(stats[1].expired == 1);
  CHECK(stats[2].received == 0);
  CHECK(f.streamed.empty());
}

TEST_CASE("Process.ExpiredMessageIsSkippedByTheNextStep") {
  Fixture f;
  // Two callers: the first holds the gated step; the second waits behind it in
  // the queue and expires there, so the step never computes it.
  Pipeline& pipeline = f.build(R"({"plumber": 1,
    "nodes": [{"id": "in", "coroutine": "input"}, {"id": "hold", "coroutine": "gated"},
              {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "hold"}, {"from": "hold", "to": "out"}]})");
  json first;
  std::optional<errc> second;
  f.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    asio::co_spawn(
        executor,
        [&]() -> asio::awaitable<void> {
          ProcessResult r = co_await pipeline.process(json("held"), 60s);
          first = r.value();
        },
        asio::detached);
    co_await Fixture::until([&] { return !f.gate_order.empty(); });
    asio::co_spawn(
        executor,
        [&]() -> asio::awaitable<void> {
          try {
            co_await pipeline.process(json("queued"), 20ms);
          } catch (const ProcessError& e) {
            second = e.code();
          }
        },
        asio::detached);
    co_await f.until_queued("hold", 1);
    co_await Fixture::until([&] { return second.has_value(); });  // its deadline passed
    f.gate.open();
    co_await Fixture::until([&] { return !first.is_null(); });
  });
  CHECK(first == json("held"));
  REQUIRE(second);
  CHECK(*second == errc::timed_out);
  CHECK(f.gate_order.size() == 1);  // the expired message never reached the step
  CHECK(pipeline.stats()[1].expired == 1);
}

TEST_CASE("Process.TenThousandConcurrentCallersGetTheirOwnResult") {
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    Fixture f;
    Pipeline& pipeline = f.build(kDoubleGraph);
    constexpr int kCallers = 10'000;
    std::atomic<int> right{0}, wrong{0};
    f.run(
        [&]() -> asio::awaitable<void> {
          auto executor = co_await asio::this_coro::executor;
          std::vector<std::future<void>> done;
          for (int i = 0; i < kCallers; ++i) {
            done.push_back(asio::co_spawn(
                executor,
                [&, i]() -> asio::awaitable<void> {
                  ProcessResult r = co_await pipeline.process(json(i), 60s);
                  (r.value() == json(2 * i) ? right : wrong)++;
                },
                asio::use_future));
          }
          // Wait without blocking the io_context: poll the counters.
          co_await Fixture::until([&] { return right + wrong == kCallers; });
          for (auto& d : done)
            d.get();  // rethrows a caller's exception
        },
        threads);
    CHECK(right == kCallers);
    CHECK(wrong == 0);
  }
}

TEST_CASE("Process.CompletionTokensFromAnotherThread") {
  Fixture f;
  Pipeline& pipeline = f.build(kDoubleGraph);
  auto guard = asio::make_work_guard(f.io);
  std::thread runner([&] { f.io.run(); });
  ProcessOptions options;
  options.timeout = 5s;
  // use_future: blocks this (non-io) thread until the result.
  ProcessResult r = pipeline.async_process(json(5), options, asio::use_future).get();
  CHECK(r.value() == json(10));
  // A plain callback runs on the pipeline's strand.
  std::promise<json> promise;
  pipeline.async_process(json(6), options, [&](std::exception_ptr error, ProcessResult result) {
    if (error) {
      promise.set_exception(error);
    } else {
      promise.set_value(result.value());
    }
  });
  CHECK(promise.get_future().get() == json(12));
  pipeline.end_input();
  guard.reset();
  runner.join();
  CHECK(pipeline.done());
}

TEST_CASE("Process.StreamingAlongside") {
  Fixture f;
  Pipeline& pipeline = f.build(kDoubleGraph);
  json requested;
  f.run([&]() -> asio::awaitable<void> {
    co_await pipeline.async_feed(json(1));
    ProcessResult r = co_await pipeline.process(json(100), 5s);
    requested = r.value();
    co_await pipeline.async_feed(json(2));
  });
  CHECK(requested == json(200));
  REQUIRE(f.streamed.size() == 2);
  CHECK(f.streamed[0].value == json(2));
  CHECK(f.streamed[1].value == json(4));
}

TEST_CASE("Process.AfterEndOfInputFailsAsStopped") {
  Fixture f;
  Pipeline& pipeline = f.build(kDoubleGraph);
  pipeline.end_input();
  std::optional<errc> code;
  asio::co_spawn(
      f.io,
      [&]() -> asio::awaitable<void> {
        try {
          co_await pipeline.process(json(1), 5s);
        } catch (const ProcessError& e) {
          code = e.code();
        }
      },
      asio::detached);
  f.io.run();
  REQUIRE(code);
  CHECK(*code == errc::pipeline_stopped);
}

TEST_CASE("Process.StopNowCancelsRequests") {
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1,
    "nodes": [{"id": "in", "coroutine": "input"}, {"id": "hold", "coroutine": "gated"},
              {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "hold"}, {"from": "hold", "to": "out"}]})");
  std::vector<errc> codes;
  asio::co_spawn(
      f.io,
      [&]() -> asio::awaitable<void> {
        auto executor = co_await asio::this_coro::executor;
        for (int i = 0; i < 3; ++i) {
          asio::co_spawn(
              executor,
              [&, i]() -> asio::awaitable<void> {
                try {
                  co_await pipeline.process(json(i), 60s);
                } catch (const ProcessError& e) {
                  codes.push_back(e.code());
                }
              },
              asio::detached);
        }
        co_await f.until_queued("hold", 2);
        pipeline.stop(false);
      },
      asio::detached);
  f.io.run();
  CHECK(pipeline.done());
  CHECK(codes == std::vector<errc>(3, errc::cancelled));
}

TEST_CASE("Process.GraphWithoutInputIsAUsageError") {
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1,
    "nodes": [{"id": "r", "coroutine": "range", "params": {"stop": 2}}]})");
  ProcessOptions options;
  CHECK_THROWS_AS(
      pipeline.async_process(json(1), options, [](std::exception_ptr, ProcessResult) {}),
      UsageError);
  f.io.run();
}

// --- priorities ------------------------------------------------------------------

TEST_CASE("Priorities.HighOvertakesQueuedLow") {
  // Aqueduct's example: three normal messages, then one high-priority one, through a
  // slow step: they complete as N, P, N, N.
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1, "settings": {"priorities": 2},
    "nodes": [{"id": "in", "coroutine": "input"}, {"id": "slow", "coroutine": "gated"},
              {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "slow"}, {"from": "slow", "to": "out"}]})");
  std::vector<std::string> completed;
  f.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    std::vector<std::future<void>> calls;
    auto call = [&](std::string name, std::uint8_t priority) {
      calls.push_back(asio::co_spawn(
          executor,
          [&, name, priority]() -> asio::awaitable<void> {
            co_await pipeline.process(json(name), 60s, priority);
            completed.push_back(name);
          },
          asio::use_future));
    };
    call("N1", 0);
    co_await Fixture::until([&] { return !f.gate_order.empty(); });  // N1 is inside the step
    call("N2", 0);
    call("N3", 0);
    co_await f.until_queued("slow", 2);
    call("P", 1);
    co_await f.until_queued("slow", 3);
    f.gate.open();
    co_await Fixture::until([&] { return completed.size() == 4; });
  });
  CHECK(completed == std::vector<std::string>{"N1", "P", "N2", "N3"});
  CHECK(f.gate_order == std::vector<json>{"N1", "P", "N2", "N3"});
}

TEST_CASE("Priorities.LowLaneIsNotStarved") {
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1, "settings": {"priorities": 2, "queue_size": 256},
    "nodes": [{"id": "in", "coroutine": "input"}, {"id": "slow", "coroutine": "gated"},
              {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "slow"}, {"from": "slow", "to": "out"}]})");
  constexpr int kHigh = 100;
  f.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    std::vector<std::future<void>> calls;
    auto call = [&](json value, std::uint8_t priority) {
      calls.push_back(asio::co_spawn(
          executor,
          [&, value, priority]() -> asio::awaitable<void> {
            co_await pipeline.process(value, 60s, priority);
          },
          asio::use_future));
    };
    call(json("first"), 1);
    co_await Fixture::until([&] { return !f.gate_order.empty(); });
    call(json("low"), 0);
    for (int i = 0; i < kHigh; ++i)
      call(json(i), 1);
    co_await f.until_queued("slow", kHigh + 1);
    f.gate.open();
    co_await Fixture::until([&] { return f.gate_order.size() == kHigh + 2; });
  });
  const auto low = std::find(f.gate_order.begin(), f.gate_order.end(), json("low"));
  REQUIRE(low != f.gate_order.end());
  // After "first", at most kOvertakeLimit high messages overtake the waiting low one.
  CHECK(low - f.gate_order.begin() <= 1 + 8);
  CHECK(low - f.gate_order.begin() > 1);  // but some did overtake it
}

TEST_CASE("Priorities.MixedLanesLoseNothingAcrossHops") {
  // End-of-stream markers travel in the lowest lane: a node must not end before
  // the data of higher lanes sent ahead of them.
  Fixture f;
  f.registry.add_async_source("mixed",
                              [](SourceContext& context, const json&) -> asio::awaitable<void> {
                                for (int i = 0; i < 2000; ++i)
                                  co_await context.emit(json(i), static_cast<std::uint8_t>(i % 3));
                              });
  Pipeline& pipeline = f.build(R"({"plumber": 1, "settings": {"priorities": 3, "queue_size": 4},
    "nodes": [{"id": "src", "coroutine": "mixed"},
              {"id": "a", "coroutine": "sleep", "params": {"ms": 0}, "concurrency": 3},
              {"id": "b", "coroutine": "double", "batch_size": 5},
              {"id": "c", "coroutine": "identity", "join": "merge"},
              {"id": "d", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "c"},
              {"from": "src", "to": "d"}, {"from": "d", "to": "c"}]})");
  (void)pipeline;
  f.io.run();
  REQUIRE(f.pipeline->done());
  std::vector<int> got, expected;
  for (const auto& r : f.streamed) {
    REQUIRE(r.kind == OutputRecord::Kind::value);
    got.push_back(r.value.get<int>());
  }
  for (int i = 0; i < 2000; ++i) {
    expected.push_back(i);
    expected.push_back(2 * i);
  }
  std::sort(got.begin(), got.end());
  std::sort(expected.begin(), expected.end());
  CHECK(got == expected);
}
