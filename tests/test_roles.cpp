// The runtime's roles tested alone (ZipJoiner, Batcher, InputPort), and what
// the roles give a pipeline: fusion, the bounded output stream, batches as
// large as asked, start/process errors.
#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "plumber/all.hpp"
#include "runtime/batcher.hpp"
#include "runtime/input_port.hpp"
#include "runtime/rate_window.hpp"
#include "runtime/zip_joiner.hpp"
#include "test_support.hpp"

using namespace plumber;
using namespace plumber::detail;
using namespace std::chrono_literals;

namespace {

Packet data(std::uint64_t id, std::uint16_t port, json value) {
  Packet p;
  p.kind = PacketKind::data;
  p.port = port;
  p.msg.id = id;
  p.msg.value = std::move(value);
  return p;
}

Packet dropped(std::uint64_t id, std::uint16_t port) {
  Packet p;
  p.kind = PacketKind::dropped;
  p.port = port;
  p.msg.id = id;
  return p;
}

}  // namespace

TEST_CASE("Processor.ZipJoinerPairsByIdWhateverTheOrder") {
  ZipJoiner zip({"left", "right"});
  std::int64_t tokens = 0;
  Packet a = data(2, 1, "r2");
  CHECK_FALSE(zip.add(a, tokens));
  Packet b = data(1, 0, "l1");
  CHECK_FALSE(zip.add(b, tokens));
  Packet c = data(2, 0, "l2");
  REQUIRE(zip.add(c, tokens));
  CHECK(c.kind == PacketKind::data);
  CHECK(c.msg.id == 2);
  CHECK(c.msg.value == json::parse(R"({"left": "l2", "right": "r2"})"));
  CHECK(tokens == -1);  // two messages became one
  // A dropped part drops the whole id.
  Packet d = dropped(1, 1);
  REQUIRE(zip.add(d, tokens));
  CHECK(d.kind == PacketKind::dropped);
  CHECK(d.msg.id == 1);
  CHECK(tokens == -1);
  CHECK(zip.empty());
}

TEST_CASE("Processor.ZipJoinerKeepsLaterMessagesOfAnIdInOrder") {
  ZipJoiner zip({"a", "b"});
  std::int64_t tokens = 0;
  for (json v : {json("a1"), json("a2")}) {
    Packet p = data(7, 0, v);
    CHECK_FALSE(zip.add(p, tokens));
  }
  Packet b1 = data(7, 1, "b1");
  REQUIRE(zip.add(b1, tokens));
  CHECK(b1.msg.value == json::parse(R"({"a": "a1", "b": "b1"})"));
  Packet b2 = data(7, 1, "b2");
  REQUIRE(zip.add(b2, tokens));
  CHECK(b2.msg.value == json::parse(R"({"a": "a2", "b": "b2"})"));
  CHECK(zip.empty());
}

TEST_CASE("Processor.ZipJoinerReportsLeftovers") {
  ZipJoiner zip({"a", "b", "c"});
  std::int64_t tokens = 0;
  Packet p = data(5, 1, 1);
  CHECK_FALSE(zip.add(p, tokens));
  const auto leftovers = zip.take_leftovers();
  REQUIRE(leftovers.size() == 1);
  CHECK(leftovers[0].id == 5);
  CHECK(leftovers[0].missing == "a, c");
  CHECK(leftovers[0].data_parts == 1);
  CHECK(zip.empty());
}

TEST_CASE("Processor.BatcherFillsAndFlushesAtItsTimeout") {
  boost::asio::io_context io;
  const Strand strand = boost::asio::make_strand(io.get_executor());
  InputPort input(strand, 8, 1, false);
  Batcher batcher(strand, 3, 20ms);
  Message m;
  CHECK_FALSE(batcher.add(Message(m)));
  auto timer = batcher.arm(input);
  REQUIRE(timer);
  CHECK_FALSE(batcher.add(Message(m)));
  CHECK_FALSE(batcher.arm(input));  // armed once per batch
  boost::asio::co_spawn(strand, std::move(*timer), boost::asio::detached);
  io.run();
  // The timer sent a flush packet for this batch into the node's own input.
  Packet flush;
  REQUIRE(input.try_receive(flush));
  CHECK(flush.kind == PacketKind::flush);
  CHECK(batcher.due(flush.msg.id));
  CHECK(batcher.take().size() == 2);
  CHECK_FALSE(batcher.due(flush.msg.id));  // nothing left to flush
  CHECK(batcher.add(Message(m)) == false);
  CHECK(batcher.add(Message(m)) == false);
  CHECK(batcher.add(Message(m)) == true);  // full at batch_size
}

TEST_CASE("Processor.InputPortServesTheHighestLaneFirst") {
  boost::asio::io_context io;
  const Strand strand = boost::asio::make_strand(io.get_executor());
  InputPort input(strand, 4, 2, false);
  for (int i = 0; i < 3; ++i) {
    Packet p = data(static_cast<std::uint64_t>(i + 1), 0, i);
    REQUIRE(input.try_send(p));
  }
  Packet high = data(9, 0, "P");
  high.msg.priority = 1;
  REQUIRE(input.try_send(high));
  CHECK(input.depth() == 4);
  std::vector<std::uint64_t> order;
  Packet p;
  while (input.try_receive(p))
    order.push_back(p.msg.id);
  CHECK(order == std::vector<std::uint64_t>{9, 1, 2, 3});
  CHECK(input.depth() == 0);
  // A full lane refuses, leaving the packet as it was.
  for (int i = 0; i < 4; ++i) {
    Packet q = data(20, 0, i);
    REQUIRE(input.try_send(q));
  }
  Packet refused = data(21, 0, "kept");
  CHECK_FALSE(input.try_send(refused));
  CHECK(refused.msg.value == "kept");
}

// --- what the roles give a pipeline --------------------------------------------

namespace {

struct Run {
  Registry registry = Registry::with_builtins();
  boost::asio::io_context io;
  GraphSpec graph;
  std::optional<Pipeline> pipeline;

  Pipeline& build(std::string_view text, PipelineOptions options = {}) {
    graph = parse_graph(text, registry);
    pipeline.emplace(Plumber(registry).build(graph, io.get_executor(), options));
    return *pipeline;
  }
  ProcessorStats stats(std::string_view node) const {
    for (const auto& s : pipeline->stats()) {
      if (s.node == node) return s;
    }
    FAIL("no node " << node);
    return {};
  }
  /// Reads the output stream to its end: the values, and the error that ended it.
  std::vector<json> read_outputs(boost::system::error_code& end) {
    std::vector<json> values;
    for (OutputRecord& record : read_records(end))
      values.push_back(std::move(record.value));
    return values;
  }
  /// Reads the output stream to its end: every record, and the error that ended it.
  std::vector<OutputRecord> read_records(boost::system::error_code& end) {
    std::vector<OutputRecord> records;
    boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<void> {
          for (;;) {
            auto [ec, record] = co_await pipeline->async_receive_output(
                boost::asio::as_tuple(boost::asio::use_awaitable));
            if (ec) {
              end = ec;
              break;
            }
            records.push_back(std::move(record));
          }
        },
        boost::asio::detached);
    io.restart();
    io.run();
    return records;
  }
};

}  // namespace

TEST_CASE("Pipeline.ChainOfSyncStepsIsFused") {
  Run r;
  r.registry.add_async("wait_a_bit",
                       [](json v, const json&) -> boost::asio::awaitable<json> { co_return v; });
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 100}},
      {"id": "a", "coroutine": "identity"}, {"id": "b", "coroutine": "identity"},
      {"id": "c", "coroutine": "identity"}, {"id": "w", "coroutine": "wait_a_bit"},
      {"id": "d", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "c"},
              {"from": "c", "to": "w"}, {"from": "w", "to": "d"}]})");
  std::size_t outputs = 0;
  p.on_output([&](OutputRecord&&) { ++outputs; });
  p.start();
  r.io.run();
  CHECK(outputs == 100);
  // a, b and c run inline in the source's coroutine; the async step w has its
  // own, and d (after an async step, which does not fuse) has its own too.
  CHECK(r.stats("a").fused);
  CHECK(r.stats("b").fused);
  CHECK(r.stats("c").fused);
  CHECK_FALSE(r.stats("w").fused);
  CHECK_FALSE(r.stats("d").fused);
  CHECK(r.stats("c").received == 100);
}

namespace {

/// src -> {a: identity, b: negate (fails on `fail_every`-th values)} -> zip -> out
constexpr const char* kDiamond = R"({"plumber": 1, "settings": {"queue_size": 8}, "nodes": [
    {"id": "src", "coroutine": "range", "params": {"stop": 5000}},
    {"id": "a", "coroutine": "identity"}, {"id": "b", "coroutine": "negate"},
    {"id": "zip", "coroutine": "identity", "join": "zip"}, {"id": "out", "coroutine": "identity"}],
  "edges": [{"from": "src", "to": "a"}, {"from": "src", "to": "b"}, {"from": "a", "to": "zip"},
            {"from": "b", "to": "zip"}, {"from": "zip", "to": "out"}]})";

void add_negate(Registry& registry, std::int64_t fail_every) {
  registry.add_function("negate", [fail_every](const json& v) -> json {
    const auto n = v.get<std::int64_t>();
    if (fail_every > 0 && n % fail_every == 0) throw std::runtime_error("refused");
    return -n;
  });
}

bool paired(const json& value) {
  return value.is_object() && value.size() == 2 && value.at("b") == -value.at("a").get<int>();
}

}  // namespace

TEST_CASE("Pipeline.DiamondOfSyncStepsIsFused") {
  Run r;
  add_negate(r.registry, 0);
  Pipeline& p = r.build(kDiamond);
  std::vector<json> values;
  p.on_output([&](OutputRecord&& record) { values.push_back(std::move(record.value)); });
  p.start();
  r.io.run();
  // The whole diamond runs in the source's coroutine: no channel hop.
  for (const char* node : {"a", "b", "zip", "out"})
    CHECK(r.stats(node).fused);
  REQUIRE(values.size() == 5000);
  CHECK(std::all_of(values.begin(), values.end(), paired));
  CHECK(values.back().at("a") == 4999);
  CHECK(r.stats("zip").received == 10000);  // parts
}

TEST_CASE("Pipeline.FusedZipDropsWhatABranchFailed") {
  Run r;
  add_negate(r.registry, 3);
  Pipeline& p = r.build(kDiamond);
  std::vector<OutputRecord> records;
  p.on_output([&](OutputRecord&& record) { records.push_back(std::move(record)); });
  p.start();
  r.io.run();
  std::vector<int> seen(5000, 0);  // ids are 1..5000
  std::size_t values = 0, errors = 0;
  for (const OutputRecord& record : records) {
    ++seen.at(record.id - 1);
    if (record.kind == OutputRecord::Kind::value) {
      ++values;
      CHECK(paired(record.value));
    } else {
      ++errors;
      CHECK(record.node == "b");  // once, by the step that failed: no zip leftover
      CHECK(record.error == "refused");
    }
  }
  CHECK(values == 3333);
  CHECK(errors == 1667);
  CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
}

TEST_CASE("Pipeline.FusedDiamondHeldByASlowReader") {
  Run r;
  add_negate(r.registry, 0);
  Pipeline& p = r.build(kDiamond);
  p.stream_outputs({.capacity = 4});
  p.start();
  for (int i = 0; i < 2000 && r.io.poll() > 0; ++i) {
  }
  CHECK_FALSE(p.done());  // held by the output stream, not buffered anywhere
  CHECK(p.emitted_messages() <= 4 + 2);
  boost::system::error_code end;
  const std::vector<json> values = r.read_outputs(end);
  CHECK(end == boost::asio::error::eof);
  REQUIRE(values.size() == 5000);
  for (std::size_t i = 0; i < values.size(); ++i) {
    CHECK(paired(values[i]));
    CHECK(values[i].at("a") == i);  // in order
  }
}

TEST_CASE("Pipeline.FusedDiamondCancelledReportsEveryId") {
  Run r;
  add_negate(r.registry, 0);
  Pipeline& p = r.build(kDiamond);
  p.stream_outputs({.capacity = 4});
  p.start();
  for (int i = 0; i < 2000 && r.io.poll() > 0; ++i) {
  }
  p.stop(false);
  boost::system::error_code end;
  const std::vector<OutputRecord> records = r.read_records(end);
  CHECK(end == boost::asio::error::eof);
  // Every id the source made (1 up to the last one seen) ends once: as a
  // value or as a cancellation.
  REQUIRE_FALSE(records.empty());
  std::uint64_t last = 0;
  for (const OutputRecord& record : records)
    last = std::max(last, record.id);
  CHECK(last >= r.stats("src").emitted);
  std::vector<int> seen(last, 0);
  for (const OutputRecord& record : records) {
    REQUIRE(record.id >= 1);
    ++seen[record.id - 1];
    CHECK(record.kind != OutputRecord::Kind::error);
  }
  CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
  CHECK(std::any_of(records.begin(), records.end(), [](const OutputRecord& record) {
    return record.kind == OutputRecord::Kind::cancelled;
  }));
}

TEST_CASE("Pipeline.OutputStreamHoldsTheGraphWhileTheReaderWaits") {
  Run r;
  Pipeline& p = r.build(R"({"plumber": 1, "settings": {"queue_size": 8}, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 5000}},
      {"id": "sq", "coroutine": "identity"}, {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "sq"}, {"from": "sq", "to": "out"}]})");
  p.stream_outputs({.capacity = 16});
  p.start();
  // Nobody reads: the graph fills its queues and the output stream, then holds.
  for (int i = 0; i < 2000 && r.io.poll() > 0; ++i) {
  }
  CHECK_FALSE(p.done());
  CHECK(p.emitted_messages() <= 16 + 8 + 8 + 2);
  // Reading at last, every output comes, in order, then eof.
  boost::system::error_code end;
  const std::vector<json> values = r.read_outputs(end);
  CHECK(p.done());
  CHECK(end == boost::asio::error::eof);
  REQUIRE(values.size() == 5000);
  CHECK(values.front() == 0);
  CHECK(values.back() == 4999);
  CHECK(p.dropped_outputs() == 0);
}

TEST_CASE("Pipeline.OutputStreamDropPolicyCounts") {
  Run r;
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 1000}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "out"}]})");
  p.stream_outputs({.capacity = 10, .overflow = OutputOverflow::drop});
  p.start();
  r.io.run();  // nobody reads: with `drop`, the run still ends
  CHECK(p.done());
  CHECK(p.dropped_outputs() == 990);
  boost::system::error_code end;
  const std::size_t received = r.read_outputs(end).size();
  CHECK(end == boost::asio::error::eof);
  CHECK(received == 10);
}

TEST_CASE("Pipeline.BatchesAreNotCappedByTheQueueSize") {
  Run r;
  std::vector<std::size_t> sizes;
  r.registry.add_batch_function("sizes", [&](std::vector<json> values, const json&) {
    sizes.push_back(values.size());
    return values;
  });
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 1000}},
      {"id": "b", "coroutine": "sizes", "batch_size": 100, "batch_timeout_ms": 60000},
      {"id": "out", "coroutine": "discard"}],
    "edges": [{"from": "src", "to": "b"}, {"from": "b", "to": "out"}]})");
  // batch_size 100 over the default queue_size 64: the input holds a batch.
  CHECK(r.graph.nodes[1].queue_size == 100);
  p.start();
  r.io.run();
  CHECK(sizes == std::vector<std::size_t>(10, 100));
}

TEST_CASE("Process.BeforeStartFailsAtOnce") {
  Run r;
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "in", "coroutine": "input"}, {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "out"}]})");
  std::optional<std::error_code> code;
  std::string text;
  boost::asio::co_spawn(
      r.io,
      [&]() -> boost::asio::awaitable<void> {
        try {
          co_await p.process(json(1), {.timeout = std::chrono::hours(1)});
        } catch (const ProcessError& e) {
          code = e.code();
          text = e.what();
        }
      },
      boost::asio::detached);
  r.io.run();  // returns at once: nothing waits for the hour
  REQUIRE(code);
  CHECK(*code == errc::not_started);
  CHECK(text == "process() before start(): start the pipeline first");
}

TEST_CASE("Process.TimeoutNamesTheNodeThatHeldTheMessage") {
  Run r;
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "in", "coroutine": "input"}, {"id": "quick", "coroutine": "identity"},
      {"id": "slow", "coroutine": "sleep", "params": {"ms": 60000}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "quick"}, {"from": "quick", "to": "slow"},
              {"from": "slow", "to": "out"}]})");
  p.start();
  std::optional<ProcessError> error;
  boost::asio::co_spawn(
      r.io,
      [&]() -> boost::asio::awaitable<void> {
        try {
          co_await p.process(json(1), {.timeout = 30ms});
        } catch (const ProcessError& e) {
          error = e;
        }
        p.end_input();
      },
      boost::asio::detached);
  r.io.run();
  REQUIRE(error);
  CHECK(error->code() == errc::timed_out);
  CHECK(error->node() == "slow");
  CHECK(std::string(error->what()) ==
        "no result before the request's timeout (the message was at node \"slow\")");
}

TEST_CASE("Pipeline.AsyncStartCompletesOnTheCallersExecutor") {
  Run r;
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 3}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "out"}]})");
  std::vector<json> values;
  p.on_output([&](OutputRecord&& record) { values.push_back(record.value); });
  bool started = false;
  // start() runs on a thread of its own: keep io.run() from returning meanwhile.
  auto work = boost::asio::make_work_guard(r.io);
  p.async_start([&](std::exception_ptr error) {
    CHECK_FALSE(error);
    started = true;
    work.reset();
  });
  r.io.run();
  CHECK(started);
  CHECK(values == std::vector<json>{0, 1, 2});
}

TEST_CASE("Pipeline.FusedChainBlockedFarDownstreamLosesNothing") {
  // a, b and c run inline in the source; c feeds an async step whose input
  // holds one message, so the chain blocks two fused nodes below its head.
  Run r;
  r.registry.add_async("yield", [](json v, const json&) -> boost::asio::awaitable<json> {
    co_await boost::asio::post(co_await boost::asio::this_coro::executor,
                               boost::asio::use_awaitable);
    co_return v;
  });
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 3000}},
      {"id": "a", "coroutine": "identity"}, {"id": "b", "coroutine": "identity"},
      {"id": "c", "coroutine": "identity"},
      {"id": "slow", "coroutine": "yield", "queue_size": 1, "concurrency": 4},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "c"},
              {"from": "c", "to": "slow"}, {"from": "slow", "to": "out"}]})");
  std::vector<json> values;
  p.on_output([&](OutputRecord&& record) { values.push_back(record.value); });
  p.start();
  r.io.run();
  CHECK(p.done());
  REQUIRE(values.size() == 3000);
  std::sort(values.begin(), values.end());
  CHECK(values.front() == 0);
  CHECK(values.back() == 2999);
  CHECK(r.stats("c").fused);
}

// --- the figures Aqueduct exports: batch sizes, waits between steps, rates ----------

TEST_CASE("Processor.StatsCountBatchSizes") {
  Run r;
  r.registry.add_batch_function("sizes",
                                [](std::vector<json> values, const json&) { return values; });
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 10}},
      {"id": "b", "coroutine": "sizes", "batch_size": 4, "batch_timeout_ms": 600000},
      {"id": "out", "coroutine": "discard"}],
    "edges": [{"from": "src", "to": "b"}, {"from": "b", "to": "out"}]})");
  p.start();
  r.io.run();
  // Batches of 4, 4 and 2 (the end of the input flushes the last).
  const ProcessorStats b = r.stats("b");
  CHECK(b.batches == 3);
  CHECK(b.batched == 10);
  BatchBuckets expected{};
  expected[1] = 1;  // <= 2
  expected[2] = 2;  // <= 4
  CHECK(b.batch_sizes == expected);
  // A node that takes one message a call has them all in the first bucket.
  const ProcessorStats out = r.stats("out");
  CHECK(out.batch_sizes[0] == 10);
  CHECK(out.batched == 10);
}

TEST_CASE("Processor.StatsMeasureWaitsBetweenSteps") {
  Run r;
  r.registry.add_batch_function("sizes",
                                [](std::vector<json> values, const json&) { return values; });
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 100}},
      {"id": "b", "coroutine": "sizes", "batch_size": 4, "batch_timeout_ms": 600000},
      {"id": "out", "coroutine": "discard"}],
    "edges": [{"from": "src", "to": "b"}, {"from": "b", "to": "out"}]})",
                        {.collect_timings = true});
  p.start();
  r.io.run();
  const ProcessorStats b = r.stats("b");  // reached through its input channel
  CHECK(b.waited == 100);
  std::uint64_t in_buckets = 0;
  for (auto n : b.wait_buckets)
    in_buckets += n;
  CHECK(in_buckets == 100);
  const ProcessorStats out = r.stats("out");  // fused into b: no channel, no wait
  CHECK(out.fused);
  CHECK(out.waited == 0);
  // Read once, at the end: the rates are over the whole run.
  CHECK(b.rate_in > 0);
  CHECK(r.stats("src").rate_out > 0);
}

TEST_CASE("Processor.StatsWaitsAreMeasuredOnlyWhenAskedFor") {
  Run r;
  Pipeline& p = r.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 10}},
      {"id": "b", "coroutine": "identity", "batch_size": 2},
      {"id": "out", "coroutine": "discard"}],
    "edges": [{"from": "src", "to": "b"}, {"from": "b", "to": "out"}]})");
  p.start();
  r.io.run();
  CHECK(r.stats("b").received == 10);
  CHECK(r.stats("b").waited == 0);
}

TEST_CASE("Processor.RateWindowCoversTheLastSeconds") {
  RateWindow window;
  const Clock::time_point t0{};
  std::vector<ProcessorStats> stats(1);
  window.begin(t0);
  auto read_at = [&](int second, std::uint64_t received) {
    stats[0].received = stats[0].emitted = received;
    window.apply(stats, t0 + std::chrono::seconds(second));
    return stats[0].rate_in;
  };
  // 100 messages a second for 6 s, then none.
  CHECK(read_at(1, 100) == doctest::Approx(100));
  CHECK(read_at(2, 200) == doctest::Approx(100));  // since the start: no sample is 5 s old
  for (int second = 3; second <= 6; ++second)
    read_at(second, 100 * static_cast<std::uint64_t>(second));
  CHECK(read_at(7, 600) == doctest::Approx(80));   // since second 2: (600 - 200) / 5
  CHECK(read_at(10, 600) == doctest::Approx(20));  // since second 5: (600 - 500) / 5
  CHECK(read_at(20, 600) == doctest::Approx(0));
  CHECK(stats[0].rate_out == doctest::Approx(0));
}

TEST_CASE("Processor.RateWindowBeforeStartIsZero") {
  RateWindow window;
  std::vector<ProcessorStats> stats(1);
  stats[0].received = 50;
  window.apply(stats, Clock::now());
  CHECK(stats[0].rate_in == 0);
}
