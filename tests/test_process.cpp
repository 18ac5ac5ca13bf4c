// Request/response through a running pipeline (Pipeline::process and
// async_process) and priority lanes. Label "runtime".
//
// Steps that must hold a message wait on a gate the test opens once the queue
// it watches is full: no test sleeps to synchronise or asserts on wall-clock time.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/version.hpp>
#if BOOST_VERSION >= 108600
#include <boost/asio/cancel_after.hpp>
#endif

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

/// Runs `io` with one coroutine calling pipeline.process(1): what it threw (a
/// ProcessError is a std::system_error), nothing when it succeeded.
std::optional<std::error_code> failure_of_process(asio::io_context& io, Pipeline& pipeline) {
  std::optional<std::error_code> thrown;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        try {
          co_await pipeline.process(json(1), {.timeout = 5s});
        } catch (const std::system_error& e) {
          thrown = e.code();
        }
      },
      asio::detached);
  io.run();
  return thrown;
}

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
    ProcessResult r = co_await pipeline.process(json(21), {.timeout = 5s});
    REQUIRE(r.outputs.size() == 1);
    CHECK(r.outputs[0].node == "out");
    result = r.value();
  });
  CHECK(result == json(42));
  CHECK(f.streamed.empty());  // a request's values go to its caller only
}

TEST_CASE("Process.BlobsTravelWithTheValueUncopied") {
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1, "name": "echo",
    "nodes": [{"id": "in", "coroutine": "input"}, {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "out"}]})");
  const Blob sent(std::vector<std::byte>(1000, std::byte{7}));
  std::vector<Blob> received;
  f.run([&]() -> asio::awaitable<void> {
    auto operation = pipeline.async_process(json("bytes"), std::vector<Blob>{sent}, {},
                                            asio::as_tuple(asio::use_awaitable));
    std::tuple<boost::system::error_code, ProcessResult> outcome = co_await std::move(operation);
    REQUIRE(!std::get<0>(outcome));
    REQUIRE(std::get<1>(outcome).outputs.size() == 1);
    CHECK(std::get<1>(outcome).outputs[0].value == json("bytes"));
    received = std::get<1>(outcome).outputs[0].blobs;
  });
  REQUIRE(received.size() == 1);
  CHECK(received[0].data() == sent.data());  // the same bytes, not a copy
  CHECK(received[0].size() == 1000);
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
    ProcessResult r = co_await pipeline.process(json("abc"), {.timeout = 5s});
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
    ProcessResult r = co_await pipeline.process(json(3), {.timeout = 5s});
    odd = r.value();
    ProcessResult r2 = co_await pipeline.process(json(4), {.timeout = 5s});
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
  std::optional<std::error_code> code;
  std::string node, what;
  json fine;
  f.run([&]() -> asio::awaitable<void> {
    try {
      co_await pipeline.process(json(13), {.timeout = 5s});
    } catch (const ProcessError& e) {
      code = e.code();
      node = e.node();
      what = e.what();
    }
    ProcessResult r = co_await pipeline.process(json(14), {.timeout = 5s});  // the pipeline goes on
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
  std::optional<std::error_code> code;
  f.run([&]() -> asio::awaitable<void> {
    try {
      co_await pipeline.process(json("late"), {.timeout = 20ms});
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
  std::optional<std::error_code> second;
  f.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    asio::co_spawn(
        executor,
        [&]() -> asio::awaitable<void> {
          ProcessResult r = co_await pipeline.process(json("held"), {.timeout = 60s});
          first = r.value();
        },
        asio::detached);
    co_await Fixture::until([&] { return !f.gate_order.empty(); });
    asio::co_spawn(
        executor,
        [&]() -> asio::awaitable<void> {
          try {
            co_await pipeline.process(json("queued"), {.timeout = 20ms});
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
                  ProcessResult r = co_await pipeline.process(json(i), {.timeout = 60s});
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
  pipeline.async_process(json(6), options, [&](boost::system::error_code ec, ProcessResult result) {
    if (ec) {
      promise.set_exception(std::make_exception_ptr(boost::system::system_error(ec)));
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
    ProcessResult r = co_await pipeline.process(json(100), {.timeout = 5s});
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
  const std::optional<std::error_code> code = failure_of_process(f.io, pipeline);
  REQUIRE(code);
  CHECK(*code == errc::pipeline_stopped);
}

TEST_CASE("Process.StopNowCancelsRequests") {
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1,
    "nodes": [{"id": "in", "coroutine": "input"}, {"id": "hold", "coroutine": "gated"},
              {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "hold"}, {"from": "hold", "to": "out"}]})");
  std::vector<std::error_code> codes;
  asio::co_spawn(
      f.io,
      [&]() -> asio::awaitable<void> {
        auto executor = co_await asio::this_coro::executor;
        for (int i = 0; i < 3; ++i) {
          asio::co_spawn(
              executor,
              [&, i]() -> asio::awaitable<void> {
                try {
                  co_await pipeline.process(json(i), {.timeout = 60s});
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
  CHECK(codes == std::vector<std::error_code>(3, make_error_code(errc::cancelled)));
}

TEST_CASE("Process.GraphWithoutInputIsAUsageError") {
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1,
    "nodes": [{"id": "r", "coroutine": "range", "params": {"stop": 2}}]})");
  ProcessOptions options;
  CHECK_THROWS_AS(
      pipeline.async_process(json(1), options, [](boost::system::error_code, ProcessResult) {}),
      UsageError);
  f.io.run();
}

// --- Asio's conventions: error_code completion, cancellation, get_executor ------------

namespace {

/// The graph of the cancellation tests: the gated step holds what it takes.
constexpr const char* kGatedGraph = R"({"plumber": 1,
  "nodes": [{"id": "in", "coroutine": "input"}, {"id": "gated", "coroutine": "gated"},
            {"id": "out", "coroutine": "identity"}],
  "edges": [{"from": "in", "to": "gated"}, {"from": "gated", "to": "out"}]})";

ProcessorStats stats_of(const Pipeline& pipeline, const std::string& node) {
  for (auto& s : pipeline.stats()) {
    if (s.node == node) return s;
  }
  FAIL("no node " << node);
  return {};
}

/// What an as_tuple completion of async_process brought.
struct Outcome {
  boost::system::error_code ec;
  ProcessResult result;
  bool done = false;
};

/// Sends "A", which the gated step holds until the gate opens (`first` gets
/// its result then); returns once the step holds it.
asio::awaitable<void> hold_one(Fixture& f, Pipeline& pipeline, json& first) {
  asio::co_spawn(
      co_await asio::this_coro::executor,
      [&]() -> asio::awaitable<void> {
        ProcessResult r = co_await pipeline.process(json("A"), {.timeout = 60s});
        first = r.value();
      },
      asio::detached);
  co_await Fixture::until([&] { return f.gate_order.size() == 1; });
}

/// Sends "B" and records how it completes.
asio::awaitable<void> ask(Pipeline& pipeline, Outcome& outcome) {
  auto operation =
      pipeline.async_process(json("B"), {.timeout = 60s}, asio::as_tuple(asio::use_awaitable));
  std::tuple<boost::system::error_code, ProcessResult> got = co_await std::move(operation);
  outcome.ec = std::get<0>(got);
  outcome.result = std::move(std::get<1>(got));
  outcome.done = true;
}

/// Opens the gate, waits for A's result, then sends "C" (`next` gets its result).
asio::awaitable<void> release_and_ask_again(Fixture& f, Pipeline& pipeline, const json& first,
                                            json& next) {
  f.gate.open();
  co_await Fixture::until([&] { return !first.is_null(); });
  ProcessResult r = co_await pipeline.process(json("C"), {.timeout = 60s});
  next = r.value();
}

}  // namespace

TEST_CASE("Process.CallerCancellationDropsTheRequestInsideTheGraph") {
  // A holds the gated step; B waits behind it in the step's queue when its
  // caller cancels it (as asio::cancel_after would: another operation won an
  // `||`). B completes at once with operation_aborted, the step never sees it,
  // and the next request goes through.
  using namespace asio::experimental::awaitable_operators;
  Fixture f;
  Pipeline& pipeline = f.build(kGatedGraph);
  json first, next;
  Outcome cancelled;
  f.run([&]() -> asio::awaitable<void> {
    co_await hold_one(f, pipeline, first);
    // B is queued at the step: the watcher wins and B is cancelled.
    co_await (ask(pipeline, cancelled) || f.until_queued("gated", 1));
    REQUIRE(cancelled.done);
    co_await release_and_ask_again(f, pipeline, first, next);
  });
  CHECK(cancelled.ec == asio::error::operation_aborted);
  CHECK(cancelled.result.node == "in");  // the last node that took it
  CHECK(cancelled.result.outputs.empty());
  CHECK(first == json("A"));
  CHECK(next == json("C"));
  CHECK(f.gate_order == std::vector<json>{json("A"), json("C")});  // B never ran
  const ProcessorStats gated = stats_of(pipeline, "gated");
  CHECK(gated.cancelled == 1);
  CHECK(gated.received == 3);
  CHECK(stats_of(pipeline, "out").received == 2);
  CHECK(f.streamed.empty());  // nothing of B leaked to the output stream
}

TEST_CASE("Process.CancelAfterCancelsTheRequest") {
  // The caller gives up after a while (asio::cancel_after from Boost 1.86; an
  // `||` with a timer, which is what it does, before). Whenever that is, the
  // request completes with operation_aborted, its message is dropped where it
  // is (never computed), and the pipeline goes on serving.
  Fixture f;
  Pipeline& pipeline = f.build(kGatedGraph);
  json first, next;
  Outcome cancelled;
  f.run([&]() -> asio::awaitable<void> {
    co_await hold_one(f, pipeline, first);
#if BOOST_VERSION >= 108600
    auto operation = pipeline.async_process(
        json("B"), {.timeout = 60s}, asio::cancel_after(5ms, asio::as_tuple(asio::use_awaitable)));
    std::tuple<boost::system::error_code, ProcessResult> got = co_await std::move(operation);
    cancelled.ec = std::get<0>(got);
    cancelled.done = true;
#else
    using namespace asio::experimental::awaitable_operators;
    asio::steady_timer timer(co_await asio::this_coro::executor, 5ms);
    co_await (ask(pipeline, cancelled) || timer.async_wait(asio::use_awaitable));
#endif
    REQUIRE(cancelled.done);
    co_await release_and_ask_again(f, pipeline, first, next);
  });
  CHECK(cancelled.ec == asio::error::operation_aborted);
  CHECK(first == json("A"));
  CHECK(next == json("C"));
  CHECK(f.gate_order == std::vector<json>{json("A"), json("C")});
  // B was cancelled in the input queue (it never entered) or at the step.
  const std::uint64_t entered = stats_of(pipeline, "in").emitted;
  CHECK(stats_of(pipeline, "gated").cancelled == entered - 2);
  CHECK(stats_of(pipeline, "out").received == 2);
}

TEST_CASE("Process.CancellationAfterCompletionChangesNothing") {
  // A signal emitted once its request completed reaches nothing (the handler
  // Plumber installed holds the request weakly), and the same signal serves
  // the next request. (Asio 1.81's any_completion_handler keeps a forwarder of
  // its own in the caller's slot: the slot is never empty again, by design.)
  Fixture f;
  Pipeline& pipeline = f.build(kDoubleGraph);
  asio::cancellation_signal signal;
  std::vector<Outcome> outcomes;
  auto ask = [&](int value, std::function<void()> then) {
    pipeline.async_process(
        json(value), {.timeout = 5s},
        asio::bind_cancellation_slot(signal.slot(),
                                     [&, then](boost::system::error_code ec, ProcessResult r) {
                                       outcomes.push_back({ec, std::move(r), true});
                                       then();
                                     }));
  };
  ask(4, [&] {
    signal.emit(asio::cancellation_type::terminal);  // too late: nothing to cancel
    ask(5, [&] { pipeline.end_input(); });
  });
  f.io.run();
  REQUIRE(outcomes.size() == 2);
  CHECK(!outcomes[0].ec);
  CHECK(outcomes[0].result.value() == json(8));
  CHECK(!outcomes[1].ec);
  CHECK(outcomes[1].result.value() == json(10));
  CHECK(pipeline.done());
}

TEST_CASE("Process.FailuresCompleteWithAnErrorCode") {
  Fixture f;
  Pipeline& pipeline = f.build(R"({"plumber": 1,
    "nodes": [{"id": "in", "coroutine": "input"}, {"id": "picky", "coroutine": "fail_on_13"},
              {"id": "hold", "coroutine": "gated"}, {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "picky"}, {"from": "picky", "to": "hold"},
              {"from": "hold", "to": "out"}]})");
  Outcome failed, late;
  f.run([&]() -> asio::awaitable<void> {
    const auto token = asio::as_tuple(asio::use_awaitable);
    std::tuple<boost::system::error_code, ProcessResult> got =
        co_await pipeline.async_process(json(13), {.timeout = 60s}, token);
    failed.ec = std::get<0>(got);
    failed.result = std::move(std::get<1>(got));
    got = co_await pipeline.async_process(json(1), {.timeout = 10ms}, token);  // held there
    late.ec = std::get<0>(got);
    late.result = std::move(std::get<1>(got));
    f.gate.open();
  });
  CHECK(failed.ec == errc::step_failed);
  CHECK(failed.ec.message() == "step failed");
  CHECK(failed.result.node == "picky");
  CHECK(failed.result.error == "node \"picky\": 13 is unlucky");
  // Where it was when its time ran out depends on the machine's speed (the
  // node is named in Process.TimeoutNamesTheNodeThatHeldTheMessage).
  CHECK(late.ec == errc::timed_out);
  CHECK(late.result.error.starts_with("no result before the request's timeout"));
  CHECK(late.result.outputs.empty());
}

TEST_CASE("Process.NotStartedCompletesWithAnErrorCode") {
  Fixture f;
  f.graph = parse_graph(kDoubleGraph, f.registry);
  Pipeline pipeline = Plumber(f.registry).build(f.graph, f.io.get_executor());
  Outcome outcome;
  pipeline.async_process(json(1), {}, [&](boost::system::error_code ec, ProcessResult r) {
    outcome.ec = ec;
    outcome.result = std::move(r);
    outcome.done = true;
  });
  CHECK(!outcome.done);  // never inside the call: always posted
  f.io.run();
  REQUIRE(outcome.done);
  CHECK(outcome.ec == errc::not_started);
  CHECK(outcome.result.error == "process() before start(): start the pipeline first");
  // The coroutine form throws the same as a ProcessError, a std::system_error.
  f.io.restart();
  const std::optional<std::error_code> thrown = failure_of_process(f.io, pipeline);
  REQUIRE(thrown);
  CHECK(*thrown == errc::not_started);
}

TEST_CASE("Process.GetExecutorIsThePipelinesStrand") {
  Fixture f;
  Pipeline& pipeline = f.build(kDoubleGraph);
  using Strand = asio::strand<asio::any_io_executor>;
  const Pipeline::executor_type executor = pipeline.get_executor();
  const auto* strand = executor.target<Strand>();
  REQUIRE(strand != nullptr);
  CHECK(strand->get_inner_executor() == asio::any_io_executor(f.io.get_executor()));
  bool on_strand = false, completion_on_strand = false;
  asio::post(pipeline.get_executor(), [&] { on_strand = strand->running_in_this_thread(); });
  // A plain callback has no executor of its own: it completes on the pipeline's.
  pipeline.async_process(json(1), {}, [&](boost::system::error_code, ProcessResult) {
    completion_on_strand = strand->running_in_this_thread();
    pipeline.end_input();
  });
  f.io.run();
  CHECK(on_strand);
  CHECK(completion_on_strand);
}

TEST_CASE("Process.OutputRecordsOutliveThePipeline") {
  // Records own their strings: reading them after the pipeline (and its graph)
  // is gone is fine (ASan would catch a view into the dead graph).
  std::vector<OutputRecord> streamed;
  ProcessResult result;
  {
    Fixture f;
    Pipeline& pipeline = f.build(R"({"plumber": 1,
      "nodes": [{"id": "in", "coroutine": "input"},
                {"id": "a_sink_with_a_name_longer_than_any_short_string", "coroutine": "identity"}],
      "edges": [{"from": "in", "to": "a_sink_with_a_name_longer_than_any_short_string"}]})");
    f.run([&]() -> asio::awaitable<void> {
      co_await pipeline.async_feed(json("streamed"));
      result = co_await pipeline.process(json("asked"), {.timeout = 60s});
      co_await Fixture::until([&] { return !f.streamed.empty(); });
    });
    streamed = std::move(f.streamed);
  }
  REQUIRE(streamed.size() == 1);
  CHECK(streamed[0].node == "a_sink_with_a_name_longer_than_any_short_string");
  CHECK(streamed[0].value == json("streamed"));
  REQUIRE(result.outputs.size() == 1);
  CHECK(result.outputs[0].node == "a_sink_with_a_name_longer_than_any_short_string");
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
            co_await pipeline.process(json(name), {.timeout = 60s, .priority = priority});
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
            co_await pipeline.process(value, {.timeout = 60s, .priority = priority});
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
