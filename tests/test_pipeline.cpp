// Pipelines at run time: Plumber::build, Pipeline and its Processors (fan-out,
// merge, zip, batching, retries, timeouts, `when`, errors, thread pools,
// feeding, stopping, multi-threaded executors, memory). Label "runtime".
//
// Steps may wait on timers (that is what makes branches slow and reorder
// messages); the tests themselves never sleep to synchronise and never assert
// on wall-clock time.
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "plumber/all.hpp"
#include "test_support.hpp"

using namespace plumber;
namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

/// An OutputRecord that owns its node name.
struct Record {
  OutputRecord::Kind kind = OutputRecord::Kind::value;
  std::uint64_t id = 0;
  std::string node;
  json value;
  std::string error;
  std::vector<Blob> blobs;
};

/// A registry, an io_context and one pipeline whose outputs are collected.
/// Members are destroyed in reverse order: the pipeline before the io_context,
/// and both before the registry they refer to.
class Harness {
 public:
  Registry registry = Registry::with_builtins();
  asio::io_context io;
  std::vector<Record> records;  // written on the pipeline's strand only

  Pipeline& build(std::string_view text, PipelineOptions options = {}) {
    graph_ = parse_graph(text, registry);
    pipeline_.emplace(Plumber(registry).build(graph_, io.get_executor(), options));
    pipeline_->on_output([this](OutputRecord&& r) {
      records.push_back({r.kind, r.id, std::string(r.node), std::move(r.value), std::move(r.error),
                         std::move(r.blobs)});
    });
    return *pipeline_;
  }

  Pipeline& pipeline() { return *pipeline_; }

  /// Starts the pipeline and runs the io_context on `threads` threads until it is done.
  void run(int threads = 1) {
    pipeline_->start();
    run_io(threads);
  }

  void run_io(int threads = 1) {
    std::vector<std::thread> extra;
    for (int i = 1; i < threads; ++i)
      extra.emplace_back([this] { io.run(); });
    io.run();
    for (auto& t : extra)
      t.join();
    REQUIRE(pipeline_->done());
  }

  std::vector<Record> of_kind(OutputRecord::Kind kind) const {
    std::vector<Record> selected;
    for (const Record& r : records) {
      if (r.kind == kind) selected.push_back(r);
    }
    return selected;
  }
  std::vector<Record> values() const { return of_kind(OutputRecord::Kind::value); }
  std::vector<Record> errors() const { return of_kind(OutputRecord::Kind::error); }
  std::vector<Record> cancelled() const { return of_kind(OutputRecord::Kind::cancelled); }

  /// The values a node output, sorted by their JSON text (merge order may vary).
  std::vector<json> sorted_values_of(const std::string& node) const {
    std::vector<json> values;
    for (const Record& r : records) {
      if (r.kind == OutputRecord::Kind::value && r.node == node) values.push_back(r.value);
    }
    std::sort(values.begin(), values.end(),
              [](const json& a, const json& b) { return a.dump() < b.dump(); });
    return values;
  }

  /// id -> value for the records of `node` (each id once).
  std::map<std::uint64_t, json> by_id(const std::string& node) const {
    std::map<std::uint64_t, json> map;
    for (const Record& r : records) {
      if (r.kind != OutputRecord::Kind::value || r.node != node) continue;
      CHECK_MESSAGE(map.emplace(r.id, r.value).second, "id " << r.id << " twice at " << node);
    }
    return map;
  }

 private:
  GraphSpec graph_;
  std::optional<Pipeline> pipeline_;
};

std::vector<json> sorted(std::vector<json> values) {
  std::sort(values.begin(), values.end(),
            [](const json& a, const json& b) { return a.dump() < b.dump(); });
  return values;
}

/// `[0, 1, ..., n-1]` as JSON text.
std::string range_array(int n) {
  json values = json::array();
  for (int i = 0; i < n; ++i)
    values.push_back(i);
  return values.dump();
}

asio::awaitable<void> wait_for(std::chrono::milliseconds delay) {
  asio::steady_timer timer(co_await asio::this_coro::executor, delay);
  co_await timer.async_wait(asio::use_awaitable);
}

/// A step that passes on only even integers (and nothing for odd ones).
class EvensOnly final : public Transform {
 public:
  void process(std::span<Message> batch, std::vector<Message>& out) override {
    for (Message& m : batch) {
      if (m.value.get<int>() % 2 == 0) out.push_back(std::move(m));
    }
  }
};

/// A step that attaches one shared blob to every message.
class AttachBlob final : public Transform {
 public:
  void process(std::span<Message> batch, std::vector<Message>& out) override {
    for (Message& m : batch) {
      // Blob(std::vector<std::byte>) does not link (see Registry.BlobFromBytesIsDefined).
      auto bytes = std::make_shared<const std::vector<std::byte>>(1024, std::byte{7});
      m.blobs.emplace_back(bytes, std::span<const std::byte>(bytes->data(), bytes->size()));
      out.push_back(std::move(m));
    }
  }
};

/// A step whose on_start fails.
class NoModel final : public Transform {
 public:
  void on_start() override { throw std::runtime_error("model file missing"); }
  void process(std::span<Message> batch, std::vector<Message>& out) override {
    for (Message& m : batch)
      out.push_back(std::move(m));
  }
};

template <class Step>
void add_step(Registry& registry, std::string name) {
  CoroutineInfo info;
  info.name = std::move(name);
  info.description = "test step";
  info.make_transform = [](const json&) { return std::make_unique<Step>(); };
  registry.add(std::move(info));
}

long peak_rss_kib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

/// Registers "jitter" (async: waits 5*(count-n) ms, so later inputs finish
/// first, and records the order it finished in) and "tag" ("f" + n).
struct ReorderingSteps {
  static constexpr int kCount = 30;
  std::vector<int> finished;  // strand only

  void add_to(Registry& registry) {
    registry.add_async("jitter", [this](json v, const json&) -> asio::awaitable<json> {
      const int n = v.get<int>();
      co_await wait_for(std::chrono::milliseconds(5 * (kCount - n)));
      finished.push_back(n);
      co_return json("s" + std::to_string(n));
    });
    registry.add_function("tag",
                          [](const json& v) { return json("f" + std::to_string(v.get<int>())); });
  }

  /// src -> slow (jitter) and fast (tag) -> pair (zip); src -> echo (id -> input).
  static std::string graph() {
    return R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "values", "params": {"values": )" +
           range_array(kCount) + R"(}},
        {"id": "slow", "coroutine": "jitter", "concurrency": )" +
           std::to_string(kCount) + R"(},
        {"id": "fast", "coroutine": "tag"},
        {"id": "pair", "coroutine": "identity", "join": "zip"},
        {"id": "echo", "coroutine": "identity"}],
      "edges": [{"from": "src", "to": "slow"}, {"from": "src", "to": "fast"},
                {"from": "slow", "to": "pair"}, {"from": "fast", "to": "pair"},
                {"from": "src", "to": "echo"}]})";
  }

  /// Every zipped object pairs parts derived from the same input, under that input's id.
  void check(const Harness& h) const {
    CHECK(h.errors().empty());
    CHECK(h.cancelled().empty());
    const auto inputs = h.by_id("echo");
    const auto pairs = h.by_id("pair");
    REQUIRE(inputs.size() == static_cast<std::size_t>(kCount));
    REQUIRE(pairs.size() == static_cast<std::size_t>(kCount));
    std::set<int> seen;
    for (const auto& [id, value] : pairs) {
      INFO("id " << id << ": " << value.dump());
      REQUIRE(value.is_object());
      REQUIRE(value.size() == 2);
      // Keyed by predecessor id, in edge order.
      CHECK(value.begin().key() == "slow");
      CHECK(std::next(value.begin()).key() == "fast");
      REQUIRE(inputs.contains(id));
      const int n = inputs.at(id).get<int>();
      CHECK(value.at("slow") == "s" + std::to_string(n));
      CHECK(value.at("fast") == "f" + std::to_string(n));
      seen.insert(n);
    }
    CHECK(seen.size() == static_cast<std::size_t>(kCount));
    // The slow branch really did reorder the messages.
    REQUIRE(finished.size() == static_cast<std::size_t>(kCount));
    CHECK_FALSE(std::is_sorted(finished.begin(), finished.end()));
  }
};

}  // namespace

// --- flow ----------------------------------------------------------------------------

TEST_CASE("Pipeline.RunsChain") {
  Harness h;
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": ["plumber", "asio", "zip"]}},
      {"id": "up", "coroutine": "upper"},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "up"}, {"from": "up", "to": "out"}]})");
  h.run();
  REQUIRE(h.records.size() == 3);
  CHECK(h.sorted_values_of("out") == sorted({"PLUMBER", "ASIO", "ZIP"}));
  std::set<std::uint64_t> ids;
  for (const Record& r : h.records)
    ids.insert(r.id);
  CHECK(ids.size() == 3);
}

TEST_CASE("Pipeline.TraceHasASpanPerStepCallAndFlowsAlongEdges") {
  // A fused chain and a zip: every step call is a span on its node's track,
  // and sampled messages (every 4th) have an arrow along each edge between steps.
  Harness h;
  Pipeline& p = h.build(R"({"plumber": 1, "name": "traced", "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 10}},
      {"id": "a", "coroutine": "identity"},
      {"id": "b", "coroutine": "identity"},
      {"id": "both", "coroutine": "identity", "join": "zip"}],
    "edges": [{"from": "src", "to": "a"}, {"from": "src", "to": "b"},
              {"from": "a", "to": "both"}, {"from": "b", "to": "both"}]})",
                        {.trace = {.enabled = true, .sample_every = 4}});
  h.run();
  std::ostringstream text;
  p.write_trace(text);
  const json trace = json::parse(text.str());
  std::map<std::string, int> tids;  // node -> its track
  std::map<int, int> spans;         // track -> step spans
  std::map<std::uint64_t, std::string> flow_ends;
  for (const json& e : trace["traceEvents"]) {
    if (e["ph"] == "M" && e["name"] == "thread_name") {
      const std::string name = e["args"]["name"];
      tids[name.substr(0, name.find(' '))] = e["tid"];
    } else if (e["ph"] == "X") {
      ++spans[e["tid"].get<int>()];
    } else if (e["ph"] == "s" || e["ph"] == "f") {
      flow_ends[e["id"]] += e["ph"].get<std::string>();
    }
  }
  CHECK(tids.size() == 4);  // a track per node, the source's too
  CHECK(spans[tids["src"]] == 0);
  CHECK(spans[tids["a"]] == 10);
  CHECK(spans[tids["b"]] == 10);
  CHECK(spans[tids["both"]] == 10);
  // Ids 1, 5, 9 cross a->both and b->both: six arrows, each with both ends.
  CHECK(flow_ends.size() == 6);
  for (const auto& [id, ends] : flow_ends)
    CHECK(ends == "sf");
  CHECK(trace["otherData"]["dropped_events"] == 0);
}

TEST_CASE("Pipeline.TraceOnlyWhenAskedFor") {
  Harness h;
  Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 3}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "out"}]})");
  h.run();
  std::ostringstream text;
  CHECK_THROWS_AS(p.write_trace(text), UsageError);
}

TEST_CASE("Pipeline.FanOutToEverySuccessor") {
  Harness h;
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": ["a", "b", "c"]}},
      {"id": "up", "coroutine": "upper"},
      {"id": "same", "coroutine": "identity"},
      {"id": "rev", "coroutine": "reverse"}],
    "edges": [{"from": "src", "to": "up"}, {"from": "src", "to": "same"}, {"from": "src", "to": "rev"}]})");
  h.run();
  CHECK(h.records.size() == 9);
  const auto same = h.by_id("same");
  const auto up = h.by_id("up");
  const auto rev = h.by_id("rev");
  REQUIRE(same.size() == 3);
  REQUIRE(up.size() == 3);
  REQUIRE(rev.size() == 3);
  // Every message reached every successor, under the same id.
  for (const auto& [id, value] : same) {
    INFO("id " << id);
    REQUIRE(up.contains(id));
    REQUIRE(rev.contains(id));
    std::string upper = value.get<std::string>();
    for (char& c : upper)
      c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    CHECK(up.at(id) == upper);
    CHECK(rev.at(id) == value);  // one letter
  }
}

TEST_CASE("Pipeline.FanOutSharesBlobs") {
  Harness h;
  add_step<AttachBlob>(h.registry, "attach");
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1, 2]}},
      {"id": "blob", "coroutine": "attach"},
      {"id": "left", "coroutine": "identity"},
      {"id": "right", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "blob"}, {"from": "blob", "to": "left"}, {"from": "blob", "to": "right"}]})");
  h.run();
  REQUIRE(h.records.size() == 4);
  std::map<std::uint64_t, std::vector<const Record*>> by_id;
  for (const Record& r : h.records)
    by_id[r.id].push_back(&r);
  REQUIRE(by_id.size() == 2);
  for (const auto& [id, pair] : by_id) {
    INFO("id " << id);
    REQUIRE(pair.size() == 2);
    REQUIRE(pair[0]->blobs.size() == 1);
    REQUIRE(pair[1]->blobs.size() == 1);
    CHECK(pair[0]->blobs[0].size() == 1024);
    // The same bytes, not a copy.
    CHECK(pair[0]->blobs[0].data() == pair[1]->blobs[0].data());
    CHECK(pair[0]->blobs[0].use_count() == 2);
  }
}

TEST_CASE("Pipeline.MergeFromTwoBranches") {
  Harness h;
  h.registry.add_function("plus_100", [](const json& v) { return json(v.get<int>() + 100); });
  h.registry.add_function("negate", [](const json& v) { return json(-v.get<int>()); });
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1, 2, 3]}},
      {"id": "a", "coroutine": "plus_100"},
      {"id": "b", "coroutine": "negate"},
      {"id": "m", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "a"}, {"from": "src", "to": "b"}, {"from": "a", "to": "m"},
              {"from": "b", "to": "m"}]})");
  h.run();
  CHECK(h.records.size() == 6);
  CHECK(h.sorted_values_of("m") == sorted({101, 102, 103, -1, -2, -3}));
  // Each id arrives once from each branch.
  std::map<std::uint64_t, std::vector<int>> parts;
  for (const Record& r : h.values())
    parts[r.id].push_back(r.value.get<int>());
  REQUIRE(parts.size() == 3);
  for (auto& [id, values] : parts) {
    std::sort(values.begin(), values.end());
    REQUIRE(values.size() == 2);
    CHECK(values[1] == 100 - values[0]);  // -n and 100 + n
  }
}

TEST_CASE("Pipeline.MergeFromTwoSources") {
  Harness h;
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "numbers", "coroutine": "range", "params": {"stop": 5}},
      {"id": "words", "coroutine": "values", "params": {"values": ["x", "y"]}},
      {"id": "m", "coroutine": "identity"}],
    "edges": [{"from": "numbers", "to": "m"}, {"from": "words", "to": "m"}]})");
  h.run();
  CHECK(h.sorted_values_of("m") == sorted({0, 1, 2, 3, 4, "x", "y"}));
  CHECK(h.by_id("m").size() == 7);  // sources never share an id
}

// --- zip -------------------------------------------------------------------------------

TEST_CASE("Processor.ZipPairsById") {
  Harness h;
  ReorderingSteps steps;
  steps.add_to(h.registry);
  h.build(ReorderingSteps::graph());
  h.run();
  steps.check(h);
}

TEST_CASE("Processor.ZipForgetsFailedIds") {
  Harness h;
  h.registry.add_function("picky", [](const json& v) {
    if (v.get<int>() % 2) throw std::runtime_error("odd " + std::to_string(v.get<int>()));
    return v;
  });
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": )" +
          range_array(10) + R"(}},
      {"id": "picky", "coroutine": "picky"},
      {"id": "plain", "coroutine": "identity"},
      {"id": "pair", "coroutine": "identity", "join": "zip"}],
    "edges": [{"from": "src", "to": "picky"}, {"from": "src", "to": "plain"},
              {"from": "picky", "to": "pair"}, {"from": "plain", "to": "pair"}]})");
  h.run();
  std::vector<json> expected;
  for (int n = 0; n < 10; n += 2)
    expected.push_back(json::parse(R"({"picky": )" + std::to_string(n) + R"(, "plain": )" +
                                   std::to_string(n) + "}"));
  CHECK(h.sorted_values_of("pair") == sorted(expected));
  const auto errors = h.errors();
  REQUIRE(errors.size() == 5);  // one per odd input, from the failing step; none from the zip
  std::set<std::string> messages;
  for (const Record& e : errors) {
    CHECK(e.node == "picky");
    messages.insert(e.error);
  }
  CHECK(messages == std::set<std::string>{"odd 1", "odd 3", "odd 5", "odd 7", "odd 9"});
}

TEST_CASE("Processor.ZipForgetsDroppedIds") {
  Harness h;
  add_step<EvensOnly>(h.registry, "evens_only");
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": )" +
          range_array(10) + R"(}},
      {"id": "evens", "coroutine": "evens_only"},
      {"id": "all", "coroutine": "identity"},
      {"id": "pair", "coroutine": "identity", "join": "zip"}],
    "edges": [{"from": "src", "to": "evens"}, {"from": "src", "to": "all"},
              {"from": "evens", "to": "pair"}, {"from": "all", "to": "pair"}]})");
  h.run();
  CHECK(h.errors().empty());
  CHECK(h.records.size() == 5);
  for (const Record& r : h.values()) {
    INFO(r.value.dump());
    CHECK(r.value.at("evens") == r.value.at("all"));
    CHECK(r.value.at("evens").get<int>() % 2 == 0);
  }
}

// --- batching ------------------------------------------------------------------------

namespace {

/// Registers "record_batch": a batch function that records each batch it gets.
struct BatchRecorder {
  std::vector<std::vector<json>> batches;  // strand only
  void add_to(Registry& registry) {
    registry.add_batch_function("record_batch", [this](std::vector<json> values, const json&) {
      batches.push_back(values);
      return values;
    });
  }
};

/// Registers "trickle": emits 1, 2, 3 with `gap_ms` between them.
void add_trickle(Registry& registry) {
  registry.add_async_source(
      "trickle",
      [](SourceContext& context, const json& params) -> asio::awaitable<void> {
        const auto gap = std::chrono::milliseconds(params.at("gap_ms").get<int>());
        for (int i = 1; i <= 3; ++i) {
          co_await context.emit(json(i));
          if (i < 3) co_await wait_for(gap);
        }
      },
      [] {
        CoroutineOptions options;
        options.params = {{"gap_ms", ParamType::integer, true, nullptr, "pause between values"}};
        return options;
      }());
}

std::string batch_graph(const std::string& source, const std::string& batching) {
  return R"({"plumber": 1, "nodes": [
      )" +
         source + R"(,
      {"id": "b", "coroutine": "record_batch", )" +
         batching + R"(},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "b"}, {"from": "b", "to": "out"}]})";
}

using Batches = std::vector<std::vector<json>>;

}  // namespace

TEST_CASE("Processor.BatchTakesWhatIsQueued") {
  Harness h;
  BatchRecorder recorder;
  recorder.add_to(h.registry);
  h.build(batch_graph(R"({"id": "src", "coroutine": "values", "params": {"values": [1, 2, 3]}})",
                      R"("batch_size": 2)"));
  h.run();
  CHECK(recorder.batches == Batches{{1, 2}, {3}});
  CHECK(h.sorted_values_of("out") == sorted({1, 2, 3}));
  CHECK(h.pipeline().stats()[1].batches == 2);
}

TEST_CASE("Processor.BatchFlushedAtEndOfInput") {
  // A long batch timeout: the partial batch [3] goes out when the input ends,
  // not when the timer fires.
  Harness h;
  BatchRecorder recorder;
  recorder.add_to(h.registry);
  h.build(batch_graph(R"({"id": "src", "coroutine": "values", "params": {"values": [1, 2, 3]}})",
                      R"("batch_size": 2, "batch_timeout_ms": 600000)"));
  h.run();
  CHECK(recorder.batches == Batches{{1, 2}, {3}});
  CHECK(h.sorted_values_of("out") == sorted({1, 2, 3}));
}

TEST_CASE("Processor.BatchTimeoutWaitsForMore") {
  SUBCASE("batch_timeout_ms > 0 waits for the batch to fill") {
    Harness h;
    BatchRecorder recorder;
    recorder.add_to(h.registry);
    add_trickle(h.registry);
    h.build(batch_graph(R"({"id": "src", "coroutine": "trickle", "params": {"gap_ms": 20}})",
                        R"("batch_size": 3, "batch_timeout_ms": 600000)"));
    h.run();
    CHECK(recorder.batches == Batches{{1, 2, 3}});
  }
  SUBCASE("batch_timeout_ms 0 never waits") {
    Harness h;
    BatchRecorder recorder;
    recorder.add_to(h.registry);
    add_trickle(h.registry);
    h.build(batch_graph(R"({"id": "src", "coroutine": "trickle", "params": {"gap_ms": 20}})",
                        R"("batch_size": 3)"));
    h.run();
    CHECK(recorder.batches == Batches{{1}, {2}, {3}});
  }
}

TEST_CASE("Processor.BatchTimeoutFlushesPartialBatch") {
  // The source emits 1, then waits until the step has run (at most 10 s)
  // before it emits 2: only the batch timer can send [1] on.
  Harness h;
  std::atomic<bool> first_batch_done{false};
  h.registry.add_batch_function("record_batch_flag", [&](std::vector<json> values, const json&) {
    first_batch_done = true;
    return values;
  });
  BatchRecorder recorder;
  recorder.add_to(h.registry);
  h.registry.add_async_source("wait_for_batch",
                              [&](SourceContext& context, const json&) -> asio::awaitable<void> {
                                co_await context.emit(json(1));
                                for (int waited = 0; !first_batch_done && waited < 10'000; ++waited)
                                  co_await wait_for(1ms);
                                co_await context.emit(json(2));
                              });
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "wait_for_batch"},
      {"id": "b", "coroutine": "record_batch", "batch_size": 2, "batch_timeout_ms": 10},
      {"id": "flag", "coroutine": "record_batch_flag"}],
    "edges": [{"from": "src", "to": "b"}, {"from": "b", "to": "flag"}]})");
  h.run();
  CHECK(recorder.batches == Batches{{1}, {2}});
  CHECK(h.sorted_values_of("flag") == sorted({1, 2}));
}

// --- failures ------------------------------------------------------------------------------

TEST_CASE("Pipeline.ThrowingStepBecomesErrorRecord") {
  Harness h;
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": ["a", "b", 3, "d"]}},
      {"id": "up", "coroutine": "upper"},
      {"id": "out", "coroutine": "identity"},
      {"id": "echo", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "up"}, {"from": "up", "to": "out"}, {"from": "src", "to": "echo"}]})");
  h.run();
  CHECK(h.sorted_values_of("out") == sorted({"A", "B", "D"}));
  const auto errors = h.errors();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].node == "up");
  CHECK(errors[0].error == "upper takes a string, not number");
  const auto inputs = h.by_id("echo");
  REQUIRE(inputs.contains(errors[0].id));
  CHECK(inputs.at(errors[0].id) == 3);  // the error record carries the failed message's id
  CHECK_FALSE(h.by_id("out").contains(errors[0].id));
}

TEST_CASE("Processor.RetriesFailedMessages") {
  // "flaky" fails the first two attempts at each value.
  std::map<int, int> attempts;  // strand only
  auto flaky = [&attempts](const json& v) {
    const int n = v.get<int>();
    const int attempt = ++attempts[n];
    if (attempt <= 2) throw std::runtime_error("attempt " + std::to_string(attempt) + " failed");
    return json(n * 10);
  };
  auto graph = [](int retries, const char* coroutine, int concurrency) {
    return R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "values", "params": {"values": [1, 2, 3]}},
        {"id": "f", "coroutine": ")" +
           std::string(coroutine) + R"(", "retries": )" + std::to_string(retries) +
           R"(, "concurrency": )" + std::to_string(concurrency) + R"(},
        {"id": "out", "coroutine": "identity"}],
      "edges": [{"from": "src", "to": "f"}, {"from": "f", "to": "out"}]})";
  };

  SUBCASE("enough retries: every message succeeds") {
    Harness h;
    h.registry.add_function("flaky", flaky);
    h.build(graph(2, "flaky", 1));
    h.run();
    CHECK(h.sorted_values_of("out") == sorted({10, 20, 30}));
    CHECK(h.errors().empty());
    CHECK(attempts == std::map<int, int>{{1, 3}, {2, 3}, {3, 3}});
    CHECK(h.pipeline().stats()[1].retried == 6);
  }
  SUBCASE("too few retries: the last failure is the error record") {
    Harness h;
    h.registry.add_function("flaky", flaky);
    h.build(graph(1, "flaky", 1));
    h.run();
    CHECK(h.values().empty());
    const auto errors = h.errors();
    REQUIRE(errors.size() == 3);
    for (const Record& e : errors) {
      CHECK(e.node == "f");
      CHECK(e.error == "attempt 2 failed");
    }
    CHECK(attempts == std::map<int, int>{{1, 2}, {2, 2}, {3, 2}});
  }
  SUBCASE("an async step is retried too") {
    Harness h;
    h.registry.add_async("flaky_async", [&](json v, const json&) -> asio::awaitable<json> {
      co_await wait_for(1ms);
      co_return flaky(v);
    });
    h.build(graph(2, "flaky_async", 2));
    h.run();
    CHECK(h.sorted_values_of("out") == sorted({10, 20, 30}));
    CHECK(h.errors().empty());
    CHECK(attempts == std::map<int, int>{{1, 3}, {2, 3}, {3, 3}});
  }
}

TEST_CASE("Processor.TimeoutOnAsyncStep") {
  Harness h;
  // 0 passes at once; 1 would take ten minutes.
  h.registry.add_async("stall", [](json v, const json&) -> asio::awaitable<json> {
    if (v.get<int>() == 1) co_await wait_for(10min);
    co_return v;
  });
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [0, 1]}},
      {"id": "stall", "coroutine": "stall", "timeout_ms": 30},
      {"id": "nap", "coroutine": "sleep", "params": {"ms": 600000}, "timeout_ms": 20},
      {"id": "out", "coroutine": "identity"},
      {"id": "echo", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "stall"}, {"from": "stall", "to": "out"},
              {"from": "src", "to": "nap"}, {"from": "src", "to": "echo"}]})");
  h.run();
  const auto inputs = h.by_id("echo");
  const auto out = h.by_id("out");
  REQUIRE(out.size() == 1);
  CHECK(out.begin()->second == 0);
  std::vector<std::string> stall_errors, nap_errors;
  for (const Record& e : h.errors()) {
    if (e.node == "stall") {
      stall_errors.push_back(e.error);
      CHECK(inputs.at(e.id) == 1);
    } else if (e.node == "nap") {
      nap_errors.push_back(e.error);
    }
  }
  CHECK(stall_errors == std::vector<std::string>{"timed out after 30 ms"});
  CHECK(nap_errors == std::vector<std::string>{"timed out after 20 ms", "timed out after 20 ms"});
  CHECK(h.errors().size() == 3);
}

namespace {
/// src -> busy (spins 30 ms, timeout_ms 5) -> out: the error records.
std::vector<Record> run_busy_step_with_timeout() {
  Harness h;
  h.registry.add_function("busy", [](const json& v) {
    const auto until = std::chrono::steady_clock::now() + 30ms;
    while (std::chrono::steady_clock::now() < until) {
    }
    return v;
  });
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1]}},
      {"id": "busy", "coroutine": "busy", "timeout_ms": 5},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "busy"}, {"from": "busy", "to": "out"}]})");
  h.run();
  CHECK(h.values().empty());
  return h.errors();
}
}  // namespace

TEST_CASE("Processor.TimeoutOnSyncStepDiscardsLateResult") {
  // A synchronous step cannot be interrupted: its late result is replaced by
  // the same error record an async step gets.
  const auto errors = run_busy_step_with_timeout();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].node == "busy");
  CHECK(errors[0].error == "timed out after 5 ms");
}

TEST_CASE("Processor.WhenPassesRejectedMessagesUnchanged") {
  Harness h;
  h.registry.add_function("negate", [](const json& v) { return json(-v.get<int>()); });
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1, 2, 3, 4, "x"]}},
      {"id": "neg", "coroutine": "negate", "when": "is_even"},
      {"id": "up", "coroutine": "upper", "when": "is_string"},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "neg"}, {"from": "neg", "to": "up"}, {"from": "up", "to": "out"}]})");
  h.run();
  CHECK(h.errors().empty());
  CHECK(h.sorted_values_of("out") == sorted({1, -2, 3, -4, "X"}));
  const auto stats = h.pipeline().stats();
  REQUIRE(stats.size() == 4);
  CHECK(stats[1].node == "neg");
  CHECK(stats[1].skipped == 3);
  CHECK(stats[1].batches == 2);
  CHECK(stats[2].node == "up");
  CHECK(stats[2].skipped == 4);

  // A message rejected by every step still completes.
  Harness all_skip;
  all_skip.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [7]}},
      {"id": "a", "coroutine": "upper", "when": "is_string"},
      {"id": "b", "coroutine": "reverse", "when": "is_object"}],
    "edges": [{"from": "src", "to": "a"}, {"from": "a", "to": "b"}]})");
  all_skip.run();
  CHECK(all_skip.sorted_values_of("b") == std::vector<json>{7});
}

// --- threads and concurrency ---------------------------------------------------------

TEST_CASE("Processor.ThreadsRunStepOnAnotherThread") {
  Harness h;
  std::mutex mutex;
  std::set<std::thread::id> step_threads;
  h.registry.add_function("where", [&](const json& v) {
    std::lock_guard lock(mutex);
    step_threads.insert(std::this_thread::get_id());
    return json(v.get<int>() * 2);
  });
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 20}},
      {"id": "w", "coroutine": "where", "threads": 2},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})");
  h.run();  // the io_context runs on this thread only
  std::vector<json> expected;
  for (int i = 0; i < 20; ++i)
    expected.push_back(2 * i);
  CHECK(h.sorted_values_of("out") == sorted(expected));
  REQUIRE_FALSE(step_threads.empty());
  CHECK(step_threads.size() <= 2);
  CHECK_FALSE(step_threads.contains(std::this_thread::get_id()));
}

// Many short batches in flight at once, some failing, the node's threads
// spinning or sleeping between batches, the io_context on two threads: every
// input ends as a zipped pair or as an error record, none twice.
TEST_CASE("Processor.ThreadPoolUnderLoadLosesNothing") {
  for (const char* spin_us : {"0", "50"}) {
    CAPTURE(spin_us);
    ::setenv("PLUMBER_THREAD_SPIN_US", spin_us, 1);
    Harness h;
    h.registry.add_function("negate_or_fail", [](const json& v) {
      const int n = v.get<int>();
      if (n % 7 == 0) throw std::runtime_error("multiple of 7: " + std::to_string(n));
      return json(-n);
    });
    h.build(R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "range", "params": {"stop": 3000}},
        {"id": "a", "coroutine": "identity"},
        {"id": "b", "coroutine": "negate_or_fail", "threads": 2, "concurrency": 8},
        {"id": "pair", "coroutine": "identity", "join": "zip"}],
      "edges": [{"from": "src", "to": "a"}, {"from": "src", "to": "b"},
                {"from": "a", "to": "pair"}, {"from": "b", "to": "pair"}]})");
    h.run(2);
    ::unsetenv("PLUMBER_THREAD_SPIN_US");
    const std::vector<Record> errors = h.errors();
    const std::map<std::uint64_t, json> pairs = h.by_id("pair");
    CHECK(h.cancelled().empty());
    CHECK(errors.size() == 429);  // 0, 7, ..., 2996
    std::set<std::uint64_t> failed;
    for (const Record& e : errors) {
      CHECK(e.node == "b");
      CHECK(e.error.find("multiple of 7") != std::string::npos);
      CHECK(failed.insert(e.id).second);
      CHECK_FALSE(pairs.contains(e.id));
    }
    CHECK(pairs.size() == 3000 - 429);
    for (const auto& [id, value] : pairs) {
      INFO("id " << id << ": " << value.dump());
      CHECK(value.at("a").get<int>() % 7 != 0);
      CHECK(value.at("b") == -value.at("a").get<int>());
    }
  }
}

// The io_context destroyed while a `threads` step's result waits for the
// strand: the pending result goes with it, and so does the pipeline its
// coroutine holds, down to the step (a cycle that would otherwise keep it).
TEST_CASE("Processor.ThreadPoolResultPendingAtShutdownIsFreed") {
  struct Hold final : Transform {
    std::atomic<bool>& entered;
    std::atomic<bool>& release;
    std::atomic<bool>& destroyed;
    Hold(std::atomic<bool>& e, std::atomic<bool>& r, std::atomic<bool>& d)
        : entered(e), release(r), destroyed(d) {}
    ~Hold() override { destroyed = true; }
    void process(std::span<Message> batch, std::vector<Message>& out) override {
      entered = true;
      while (!release)
        std::this_thread::yield();
      for (Message& m : batch)
        out.push_back(std::move(m));
    }
  };
  std::atomic<bool> entered{false}, release{false}, destroyed{false};
  {
    Harness h;
    CoroutineInfo hold;
    hold.name = "hold";
    hold.make_transform = [&](const json&) {
      return std::make_unique<Hold>(entered, release, destroyed);
    };
    h.registry.add(std::move(hold));
    h.build(R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "range", "params": {"stop": 1}},
        {"id": "w", "coroutine": "hold", "threads": 1},
        {"id": "out", "coroutine": "identity"}],
      "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})");
    h.pipeline().start();
    while (!entered) {
      h.io.poll();
      std::this_thread::yield();
    }
    // The thread queues the result and posts it to the strand once the step
    // returns; the io_context never runs again.
    release = true;
    std::this_thread::sleep_for(50ms);
    CHECK(h.values().empty());
    CHECK_FALSE(destroyed);
  }
  CHECK(destroyed);
}

TEST_CASE("Processor.ConcurrencyBoundsMessagesInFlight") {
  Harness h;
  int in_flight = 0, most = 0;  // strand only
  h.registry.add_async("slowly", [&](json v, const json&) -> asio::awaitable<json> {
    most = std::max(most, ++in_flight);
    co_await wait_for(20ms);
    --in_flight;
    co_return v;
  });
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 12}},
      {"id": "s", "coroutine": "slowly", "concurrency": 3},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "s"}, {"from": "s", "to": "out"}]})");
  h.run();
  CHECK(h.values().size() == 12);
  CHECK(most == 3);
}

TEST_CASE("Processor.BackPressureBoundsTheQueue") {
  // A slow step behind a queue of 4: the source can never run further ahead of
  // the step than what the queue holds (plus the one message it is sending).
  Harness h;
  Pipeline* pipeline = nullptr;
  std::int64_t most_ahead = 0;  // strand only
  h.registry.add_async("observe", [&](json v, const json&) -> asio::awaitable<json> {
    const auto ahead =
        static_cast<std::int64_t>(pipeline->emitted_messages()) - (v.get<std::int64_t>() + 1);
    most_ahead = std::max(most_ahead, ahead);
    co_await wait_for(1ms);  // the source runs meanwhile, until the queue is full
    co_return v;
  });
  Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 100}},
      {"id": "obs", "coroutine": "observe", "queue_size": 4},
      {"id": "out", "coroutine": "discard"}],
    "edges": [{"from": "src", "to": "obs"}, {"from": "obs", "to": "out"}]})");
  pipeline = &p;
  h.run();
  CHECK(p.stats()[1].received == 100);
  INFO("the source ran " << most_ahead << " messages ahead of the step");
  // The queue did fill up (the last message the source handed over may not be
  // counted as emitted yet)...
  CHECK(most_ahead >= 3);
  // ... and held the source back: without back pressure it would run 99 ahead.
  CHECK(most_ahead <= 5);
}

// --- feeding -----------------------------------------------------------------------------

namespace {
const char* kInputGraph = R"({"plumber": 1, "nodes": [
    {"id": "in", "coroutine": "input", "queue_size": 2},
    {"id": "up", "coroutine": "upper", "queue_size": 2},
    {"id": "out", "coroutine": "identity"}],
  "edges": [{"from": "in", "to": "up"}, {"from": "up", "to": "out"}]})";
}

TEST_CASE("Pipeline.FeedFromAnotherThread") {
  Harness h;
  Pipeline& p = h.build(kInputGraph);
  p.start();
  std::vector<json> expected;
  for (int i = 0; i < 100; ++i)
    expected.push_back("V" + std::to_string(i));
  // Small queues: the feeder is held back while the graph catches up.
  std::thread feeder([&p] {
    for (int i = 0; i < 100; ++i)
      p.feed(json("v" + std::to_string(i)));
    p.end_input();
  });
  h.run_io();
  feeder.join();
  CHECK(h.sorted_values_of("out") == sorted(expected));
  CHECK(h.by_id("out").size() == 100);
  CHECK_THROWS_AS(p.feed(json("late")), std::system_error);
}

// Batches (what `plumber run` feeds): in order, mixed with single values, more
// batches than may be in flight at once, and refused after end_input.
TEST_CASE("Pipeline.FeedBatches") {
  Harness h;
  Pipeline& p = h.build(kInputGraph);
  p.start();
  std::vector<json> expected;
  std::error_code late;
  std::thread feeder([&] {
    int n = 0;
    for (int batch = 0; batch < 20; ++batch) {
      std::vector<json> values;
      for (int i = 0; i < 50; ++i, ++n) {
        values.push_back("v" + std::to_string(n));
        expected.push_back("V" + std::to_string(n));
      }
      p.feed_batch(std::move(values));
      p.feed(json("v" + std::to_string(n)));
      expected.push_back("V" + std::to_string(n++));
    }
    p.end_input();
    try {
      p.feed_batch({json("late")});
    } catch (const std::system_error& e) {
      late = e.code();
    }
  });
  h.run_io();
  feeder.join();
  std::vector<json> got;
  for (const auto& [id, value] : h.by_id("out"))
    got.push_back(value);
  CHECK(got == expected);  // ids follow the order fed
  CHECK(late == make_error_code(errc::input_closed));
}

// stop(false) while batches wait: every value fed is an output or a cancelled record.
TEST_CASE("Pipeline.FeedBatchesCancelled") {
  Harness h;
  Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
      {"id": "in", "coroutine": "input"},
      {"id": "slow", "coroutine": "sleep", "params": {"ms": 1}, "queue_size": 1}],
    "edges": [{"from": "in", "to": "slow"}]})");
  p.start();
  std::size_t fed = 0;
  std::thread feeder([&] {
    try {
      for (int batch = 0; batch < 100; ++batch) {
        std::vector<json> values(100, json(batch));
        p.feed_batch(std::move(values));
        fed += 100;
        if (batch == 5) p.stop(false);
      }
    } catch (const std::system_error&) {
      // refused once the pipeline stopped
    }
  });
  h.run_io();
  feeder.join();
  CHECK(fed >= 600);
  CHECK(h.values().size() + h.cancelled().size() == fed);
}

TEST_CASE("Pipeline.FeedErrors") {
  SUBCASE("a graph without an input node") {
    Harness h;
    Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "values", "params": {"values": [1]}},
        {"id": "out", "coroutine": "identity"}],
      "edges": [{"from": "src", "to": "out"}]})");
    CHECK_THROWS_AS(p.feed(json(1)), UsageError);
    h.run();
    CHECK(h.values().size() == 1);
  }
  SUBCASE("feeding after end_input") {
    Harness h;
    Pipeline& p = h.build(kInputGraph);
    p.start();
    std::error_code late;
    std::thread feeder([&] {
      p.feed(json("only"));
      p.end_input();
      try {
        p.feed(json("late"));
      } catch (const std::system_error& e) {
        late = e.code();
      }
    });
    h.run_io();
    feeder.join();
    CHECK(late == make_error_code(errc::input_closed));
    CHECK(h.sorted_values_of("out") == std::vector<json>{"ONLY"});
  }
}

// Regression: a FeedItem temporary inside async_feed's co_await expression was
// destroyed early by g++ 12 (values came out as "W0" ten times, then SIGSEGV).
TEST_CASE("Pipeline.AsyncFeed") {
  Harness h;
  Pipeline& p = h.build(kInputGraph);
  p.start();
  asio::co_spawn(
      h.io,
      [&p]() -> asio::awaitable<void> {
        for (int i = 0; i < 10; ++i) {
          json value("w" + std::to_string(i));
          co_await p.async_feed(std::move(value));
        }
        p.end_input();
      },
      asio::detached);
  h.run_io();
  std::vector<json> expected;
  for (int i = 0; i < 10; ++i)
    expected.push_back("W" + std::to_string(i));
  CHECK(h.sorted_values_of("out") == sorted(expected));
}

// --- stopping ------------------------------------------------------------------------------

TEST_CASE("Pipeline.StopGracefulDrains") {
  SUBCASE("an endless source stops, and what it emitted comes out") {
    Harness h;
    Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "range", "params": {"stop": 1000000000}},
        {"id": "nap", "coroutine": "sleep", "params": {"ms": 2}, "concurrency": 4},
        {"id": "out", "coroutine": "identity"}],
      "edges": [{"from": "src", "to": "nap"}, {"from": "nap", "to": "out"}]})");
    p.on_output([&h, &p](OutputRecord&& r) {
      if (h.records.empty()) p.stop(true);
      h.records.push_back(
          {r.kind, r.id, std::string(r.node), std::move(r.value), std::move(r.error), {}});
    });
    h.run();
    CHECK(h.errors().empty());
    CHECK(h.cancelled().empty());
    const auto stats = p.stats();
    REQUIRE(stats[0].node == "src");
    CHECK(stats[0].emitted > 0);
    CHECK(h.values().size() == stats[0].emitted);  // every emitted message drained
    CHECK(h.by_id("out").size() == stats[0].emitted);
  }
  SUBCASE("fed values are processed, later feeds are refused") {
    Harness h;
    Pipeline& p = h.build(kInputGraph);
    p.start();
    std::thread feeder([&p] {
      for (int i = 0; i < 10; ++i)
        p.feed(json("g" + std::to_string(i)));
      p.stop(true);
    });
    h.run_io();
    feeder.join();
    std::vector<json> expected;
    for (int i = 0; i < 10; ++i)
      expected.push_back("G" + std::to_string(i));
    CHECK(h.sorted_values_of("out") == sorted(expected));
    CHECK(h.cancelled().empty());
    CHECK_THROWS_AS(p.feed(json("late")), std::system_error);
  }
}

namespace {

/// Feeds 0..19 to in -> gate -> out, where gate (an async step with
/// `concurrency`) stalls odd values for ten minutes. Once `concurrency` odd
/// values stall, every slot of the step is taken and the feeder calls
/// stop(false). Every fed message must then come out exactly once: as a value,
/// an error or cancelled.
void check_stop_now(int concurrency) {
  Harness h;
  std::mutex mutex;
  std::condition_variable changed;
  int stalled = 0;
  h.registry.add_async("gate", [&](json v, const json&) -> asio::awaitable<json> {
    if (v.get<int>() % 2 == 1) {
      {
        std::lock_guard lock(mutex);
        ++stalled;
      }
      changed.notify_all();
      co_await wait_for(10min);
    }
    co_return v;
  });
  Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
      {"id": "in", "coroutine": "input"},
      {"id": "gate", "coroutine": "gate", "concurrency": )" +
                        std::to_string(concurrency) + R"(},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "in", "to": "gate"}, {"from": "gate", "to": "out"}]})");
  p.start();
  constexpr int kFed = 20;
  std::thread feeder([&] {
    for (int i = 0; i < kFed; ++i)
      p.feed(json(i));  // fits in the input queue (64)
    std::unique_lock lock(mutex);
    changed.wait(lock, [&] { return stalled == concurrency; });
    lock.unlock();
    p.stop(false);
  });
  h.run_io();
  feeder.join();

  CHECK(stalled == concurrency);
  std::string all;
  for (const Record& r : h.records) {
    all += std::to_string(r.id) + " " + r.node + " " + r.value.dump() + " " + r.error + "\n";
  }
  INFO("records:\n" << all);
  std::set<std::uint64_t> ids;
  for (const Record& r : h.records) {
    INFO("id " << r.id << " at " << r.node);
    CHECK(ids.insert(r.id).second);  // once
    if (r.kind == OutputRecord::Kind::value) {
      CHECK(r.value.get<int>() % 2 == 0);  // stalled ones never finished
    } else {
      CHECK(r.kind == OutputRecord::Kind::cancelled);
      CHECK(r.error == "cancelled");
    }
  }
  CHECK(h.records.size() == static_cast<std::size_t>(kFed));  // nothing lost
  // At most `concurrency` even values got through before the step filled up.
  CHECK(h.cancelled().size() >= static_cast<std::size_t>(kFed - concurrency));
}

}  // namespace

TEST_CASE("Pipeline.StopNowReportsEveryMessageOnce") {
  check_stop_now(1);
}

// Regression: a message waiting for a free concurrency slot when stop(false)
// came was neither in batch_ nor in a unit, so it was never reported.
TEST_CASE("Pipeline.StopNowReportsMessageWaitingForSlot") {
  check_stop_now(4);
}

TEST_CASE("Pipeline.DestructorCancelsWhatRuns") {
  // Destroying a running Pipeline stops it as stop(false); with the executor
  // kept running, every message still gets exactly one record.
  Registry registry = Registry::with_builtins();
  asio::io_context io;
  const GraphSpec graph = parse_graph(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 1000000000}},
      {"id": "nap", "coroutine": "sleep", "params": {"ms": 1}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "nap"}, {"from": "nap", "to": "out"}]})",
                                      registry);
  std::vector<Record> records;
  std::optional<Pipeline> pipeline = Plumber(registry).build(graph, io.get_executor());
  std::uint64_t emitted = 0;
  pipeline->on_output([&](OutputRecord&& r) {
    records.push_back({r.kind, r.id, std::string(), std::move(r.value), std::move(r.error), {}});
    if (pipeline) {
      emitted = pipeline->emitted_messages();
      pipeline.reset();  // from inside the run
    }
  });
  pipeline->start();
  io.run();  // returns: nothing is left running
  REQUIRE_FALSE(pipeline.has_value());
  REQUIRE(records.size() >= 1);
  CHECK(records[0].kind == OutputRecord::Kind::value);
  std::set<std::uint64_t> ids;
  for (const Record& r : records) {
    CHECK(ids.insert(r.id).second);  // once
    CHECK((r.kind == OutputRecord::Kind::value || r.kind == OutputRecord::Kind::cancelled));
  }
  // The source may emit a few more while the stop is on its way; each of them
  // (ids 1, 2, ... in emission order) is reported.
  CHECK(records.size() >= emitted);
  CHECK(*ids.rbegin() == ids.size());
}

// --- executors --------------------------------------------------------------------------

TEST_CASE("Pipeline.MultiThreadedIoContext") {
  SUBCASE("zip pairs by id") {
    Harness h;
    ReorderingSteps steps;
    steps.add_to(h.registry);
    h.build(ReorderingSteps::graph());
    h.run(2);
    steps.check(h);
  }
  SUBCASE("fan-out, merge, batches and a thread pool") {
    Harness h;
    h.registry.add_function("square",
                            [](const json& v) { return json(v.get<int>() * v.get<int>()); });
    BatchRecorder recorder;
    recorder.add_to(h.registry);
    h.build(R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "range", "params": {"stop": 2000}},
        {"id": "sq", "coroutine": "square", "threads": 2},
        {"id": "b", "coroutine": "record_batch", "batch_size": 7},
        {"id": "m", "coroutine": "identity"}],
      "edges": [{"from": "src", "to": "sq"}, {"from": "src", "to": "b"}, {"from": "sq", "to": "m"},
                {"from": "b", "to": "m"}]})");
    h.run(2);
    std::vector<json> expected;
    for (int i = 0; i < 2000; ++i) {
      expected.push_back(i);
      expected.push_back(i * i);
    }
    CHECK(h.sorted_values_of("m") == sorted(expected));
    std::size_t batched = 0;
    for (const auto& batch : recorder.batches) {
      CHECK(batch.size() <= 7);
      batched += batch.size();
    }
    CHECK(batched == 2000);
  }
}

// --- lifecycle and stats ------------------------------------------------------------------

TEST_CASE("Pipeline.StartTwiceThrows") {
  Harness h;
  Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1]}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "out"}]})");
  p.start();
  CHECK_THROWS_AS(p.start(), UsageError);
  h.run_io();
  CHECK(h.values().size() == 1);
}

TEST_CASE("Pipeline.OnStartFailureNamesNode") {
  Harness h;
  add_step<NoModel>(h.registry, "needs_model");
  Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1]}},
      {"id": "model", "coroutine": "needs_model"}],
    "edges": [{"from": "src", "to": "model"}]})");
  CHECK_THROWS_WITH(p.start(), "node \"model\": on_start failed: model file missing");

  Harness missing;
  Pipeline& q = missing.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "lines", "params": {"path": "/nonexistent/plumber/input.txt"}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "out"}]})");
  CHECK_THROWS_WITH(q.start(),
                    "node \"src\": on_start failed: cannot open /nonexistent/plumber/input.txt: "
                    "No such file or directory");
}

TEST_CASE("Pipeline.BuildUsesWhatLoadingResolved") {
  Registry extended = Registry::with_builtins();
  extended.add_function("extra", [](const json& v) { return json(v.get<int>() + 1); });
  const GraphSpec graph = parse_graph(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1]}},
      {"id": "x", "coroutine": "extra"}],
    "edges": [{"from": "src", "to": "x"}]})",
                                      extended, "ext.json");
  // A loaded graph carries its coroutines: building looks nothing up again.
  const Registry plain = Registry::with_builtins();
  asio::io_context io;
  Pipeline pipeline = Plumber(plain).build(graph, io.get_executor());
  std::vector<json> values;
  pipeline.on_output([&](OutputRecord&& r) { values.push_back(r.value); });
  pipeline.start();
  io.run();
  CHECK(values == std::vector<json>{2});

  // A spec made by hand is resolved by the registry that builds it.
  GraphSpec by_hand = graph;
  for (NodeSpec& node : by_hand.nodes)
    node.info.reset();
  try {
    (void)Plumber(plain).build(by_hand, io.get_executor());
    FAIL("expected a GraphError");
  } catch (const GraphError& e) {
    REQUIRE(e.diagnostics().size() == 1);
    CHECK(e.diagnostics()[0].format(e.file()) ==
          "ext.json: /nodes/1/coroutine: unknown coroutine \"extra\"");
  }
}

TEST_CASE("Pipeline.OnDoneAndStats") {
  Harness h;
  Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1, "two", 3, 100]}},
      {"id": "fib", "coroutine": "fib", "when": "is_number"},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "fib"}, {"from": "fib", "to": "out"}]})",
                        {.collect_timings = true});
  int done_calls = 0;
  p.on_done([&] { ++done_calls; });
  CHECK(p.expected_messages() == std::optional<std::uint64_t>(4));
  CHECK_FALSE(p.done());
  h.run();
  CHECK(done_calls == 1);
  CHECK(p.emitted_messages() == 4);
  CHECK(h.sorted_values_of("out") == sorted({1, "two", 2}));
  const auto errors = h.errors();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].node == "fib");
  CHECK(errors[0].error == "fib: 100 is outside [0, 92]");

  const auto stats = p.stats();
  REQUIRE(stats.size() == 3);  // topological order
  CHECK(stats[0].node == "src");
  CHECK(stats[0].coroutine == "values");
  CHECK(stats[0].emitted == 4);
  CHECK(stats[1].node == "fib");
  CHECK(stats[1].received == 4);
  CHECK(stats[1].skipped == 1);
  CHECK(stats[1].errors == 1);
  CHECK(stats[1].batches == 3);
  CHECK(stats[1].emitted == 3);
  CHECK(stats[1].busy_ns > 0);  // collect_timings
  CHECK(stats[1].queue_depth == 0);
  CHECK(stats[2].node == "out");
  CHECK(stats[2].received == 3);
  CHECK(stats[2].emitted == 3);
  CHECK(p.graph().name == "graph");
}

// A source's `received` counts what it emitted (ProcessorStats).
TEST_CASE("Pipeline.SourceStatsCountReceived") {
  Harness h;
  Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1, 2, 3, 4]}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "out"}]})");
  h.run();
  const auto stats = p.stats();
  CHECK(stats[0].node == "src");
  CHECK(stats[0].emitted == 4);
  CHECK(stats[0].received == 4);
}

TEST_CASE("Pipeline.SourceErrors") {
  SUBCASE("a malformed line is an error record; the source goes on") {
    const auto path =
        (std::filesystem::temp_directory_path() / "plumber_test_source_errors.jsonl").string();
    {
      std::ofstream out(path);
      out << "1\n{bad\n3\n";
    }
    Harness h;
    h.build(R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "jsonl", "params": {"path": ")" +
            path + R"("}},
        {"id": "out", "coroutine": "identity"}],
      "edges": [{"from": "src", "to": "out"}]})");
    h.run();
    std::filesystem::remove(path);
    CHECK(h.sorted_values_of("out") == sorted({1, 3}));
    const auto errors = h.errors();
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].node == "src");
    CHECK(errors[0].error.starts_with(path + ":2: malformed JSON: "));
  }
  SUBCASE("an async source that throws ends with an error record") {
    Harness h;
    h.registry.add_async_source("sensor",
                                [](SourceContext& context, const json&) -> asio::awaitable<void> {
                                  co_await context.emit(json(1));
                                  co_await context.emit(json(2));
                                  throw std::runtime_error("sensor unplugged");
                                });
    h.build(R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "sensor"},
        {"id": "out", "coroutine": "identity"}],
      "edges": [{"from": "src", "to": "out"}]})");
    h.run();
    CHECK(h.sorted_values_of("out") == sorted({1, 2}));
    const auto errors = h.errors();
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].node == "src");
    CHECK(errors[0].error == "sensor unplugged");
  }
}

// A blocking reader (a `lines`/`jsonl` source on stdin or a FIFO) runs on a
// detached thread. Here the pipeline is stopped while the reader waits for a
// line, the pipeline and the io_context are destroyed, and then a line
// arrives: the reader must neither touch the destroyed io_context's channel
// (ThreadSanitizer: heap-use-after-free in channel_service::base_destroy) nor
// get stuck; it finishes and closes the FIFO.
TEST_CASE("Pipeline.BlockingReaderOutlivesIoContext") {
  const auto dir =
      std::filesystem::temp_directory_path() / ("plumber_fifo_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string fifo = (dir / "lines").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  int writer = -1;
  std::thread open_writer(
      [&] { writer = ::open(fifo.c_str(), O_WRONLY); });  // waits for the reader
  {
    Harness h;
    Pipeline& p = h.build(R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "lines", "params": {"path": ")" +
                          fifo + R"("}},
        {"id": "up", "coroutine": "upper"}],
      "edges": [{"from": "src", "to": "up"}]})");
    p.on_output([&h, &p](OutputRecord&& r) {
      h.records.push_back(
          {r.kind, r.id, std::string(r.node), std::move(r.value), std::move(r.error), {}});
      p.stop(true);  // the reader is now blocked waiting for the next line
    });
    p.start();  // opens the FIFO
    open_writer.join();
    REQUIRE(writer >= 0);
    REQUIRE(::write(writer, "a\n", 2) == 2);
    h.run_io();
    CHECK(h.sorted_values_of("up") == std::vector<json>{"A"});
  }  // the pipeline and the io_context are gone; the reader thread is not
  const auto previous = ::signal(SIGPIPE, SIG_IGN);
  const bool written = ::write(writer, "b\n", 2) == 2;  // wakes the reader up
  ::signal(SIGPIPE, previous);
  REQUIRE(written);
  // The reader thread closes its end of the FIFO when it finishes.
  pollfd closed{writer, 0, 0};
  const bool reader_closed = ::poll(&closed, 1, 10'000) == 1 && (closed.revents & POLLERR);
  CHECK(reader_closed);
  ::close(writer);
  std::filesystem::remove_all(dir);
}

// --- memory ----------------------------------------------------------------------------------

TEST_CASE("Pipeline.MemoryStaysFlat") {
  const char* graph = R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": %COUNT%}},
      {"id": "id", "coroutine": "identity"},
      {"id": "sink", "coroutine": "discard"}],
    "edges": [{"from": "src", "to": "id"}, {"from": "id", "to": "sink"}]})";
  auto run = [&](const std::string& count) {
    std::string text = graph;
    text.replace(text.find("%COUNT%"), 7, count);
    Harness h;
    Pipeline& p = h.build(text);
    h.run();
    CHECK(h.records.empty());  // discard outputs nothing
    return p.stats();
  };
  (void)run("10000");  // warm up the allocator
  const long before = peak_rss_kib();
  const auto stats = run("1000000");
  const long after = peak_rss_kib();
  REQUIRE(stats.size() == 3);
  CHECK(stats[0].emitted == 1'000'000);
  CHECK(stats[2].received == 1'000'000);
  INFO("peak RSS grew by " << (after - before) << " KiB");
  CHECK(after - before < 64 * 1024);
}
