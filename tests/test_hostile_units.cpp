// Hostile input, unit level: the JSON entry point (src/json_parse.*), integer
// params at the edges of int64, and the range source near 2^63 (issue 12).
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "cbor_scalar.hpp"
#include "json_parse.hpp"
#include "plumber/all.hpp"
#include "plumber/error.hpp"
#include "test_support.hpp"

using plumber::json;
using plumber::detail::JsonParseError;
using plumber::detail::parse_cbor;
using plumber::detail::parse_json;

namespace {

std::string what_of_parse(std::string_view text) {
  try {
    parse_json(text);
  } catch (const JsonParseError& e) {
    return e.what();
  }
  return "(parsed)";
}

std::vector<std::string> diagnostics_of(const std::string& nodes) {
  const auto registry = plumber::Registry::with_builtins();
  try {
    plumber::parse_graph(R"({"plumber": 1, "nodes": [)" + nodes + "]}", registry, "g.json");
  } catch (const plumber::GraphError& e) {
    std::vector<std::string> lines;
    for (const auto& d : e.diagnostics())
      lines.push_back(d.format(e.file()));
    return lines;
  }
  return {};
}

std::vector<json> drain_range(std::int64_t start, std::int64_t stop, std::int64_t step) {
  const auto registry = plumber::Registry::with_builtins();
  json params = json::object();
  params["start"] = start;
  params["stop"] = stop;
  params["step"] = step;
  auto source = registry.find("range")->make_source(params);
  std::vector<json> values;
  while (auto value = source->next()) {
    values.push_back(std::move(*value));
    REQUIRE(values.size() <= 10);
  }
  CHECK(source->size_hint() == values.size());
  return values;
}

constexpr auto kMax = std::numeric_limits<std::int64_t>::max();
constexpr auto kMin = std::numeric_limits<std::int64_t>::min();

}  // namespace

TEST_CASE("GraphSpec.JsonParseKeepsOrderAndLastDuplicate") {
  const json v = parse_json(R"({"b": 1, "a": [true, null, "x"], "b": 2.5})");
  CHECK(v.dump() == R"({"b":2.5,"a":[true,null,"x"]})");
  // Many keys: a hash index, not ordered_map's linear search per key.
  std::string text = "{";
  for (int i = 0; i < 50'000; ++i)
    text += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":" + std::to_string(i);
  text += ",\"k7\":\"again\"}";
  const json many = parse_json(text);
  CHECK(many.size() == 50'000);
  CHECK(many["k7"] == "again");
  CHECK(many.begin().key() == "k0");
}

TEST_CASE("GraphSpec.JsonParseErrorsArePrecise") {
  CHECK(what_of_parse("1e999") == "number overflow parsing '1e999' at line 1, column 1");
  CHECK(what_of_parse("[1,\n -1e999]") == "number overflow parsing '-1e999' at line 2, column 2");
  CHECK(what_of_parse(std::string(300, '[')) ==
        "nested deeper than 256 levels at line 1, column 257");
  CHECK(what_of_parse(R"(["[[[[", )" + std::string(300, '[')) ==
        "nested deeper than 256 levels at line 1, column 265");
  CHECK(
      what_of_parse("{\"a\": tru}").starts_with("parse error at line 1, column 10: syntax error"));
  CHECK(what_of_parse("1 2").starts_with("parse error at line 1, column 3"));
  CHECK(what_of_parse("").starts_with("parse error at line 1, column 1"));
  CHECK(parse_json(std::string(256, '[') + std::string(256, ']')).is_array());
}

TEST_CASE("GraphSpec.CborParseHasTheSameLimits") {
  json deep = json::array();
  for (int i = 0; i < 300; ++i)
    deep = json::array({deep});
  const auto bytes = json::to_cbor(deep);
  try {
    parse_cbor(bytes.data(), bytes.size());
    FAIL("a CBOR value 301 levels deep was accepted");
  } catch (const JsonParseError& e) {
    CHECK(std::string(e.what()) == "nested deeper than 256 levels");
  }
  const auto fine = json::to_cbor(json{{"a", 1}, {"b", json::array({1.5, "x"})}});
  CHECK(parse_cbor(fine.data(), fine.size()) == json{{"a", 1}, {"b", json::array({1.5, "x"})}});
  const std::uint8_t truncated[] = {0x82, 0x01};
  CHECK_THROWS_AS(parse_cbor(truncated, sizeof truncated), JsonParseError);
}

TEST_CASE("GraphSpec.CborScalarsReadAndWrittenAsNlohmannDoes") {
  // Scalars skip nlohmann on both sides of a worker's rings: what each writes,
  // the other reads back equal, type included.
  const json scalars[] = {nullptr,
                          true,
                          false,
                          0u,
                          23u,
                          24u,
                          255u,
                          256u,
                          65535u,
                          65536u,
                          4294967295u,
                          4294967296u,
                          std::numeric_limits<std::uint64_t>::max(),
                          -1,
                          -24,
                          -25,
                          -256,
                          -257,
                          -65537,
                          std::numeric_limits<std::int64_t>::min(),
                          0.0,
                          -0.0,
                          1.5,
                          1e300,
                          -3.25e-310,
                          std::numeric_limits<double>::infinity(),
                          "",
                          "x",
                          std::string(23, 'a'),
                          std::string(24, 'b'),
                          std::string(300, 'c'),
                          std::string(70000, 'd'),
                          "caf\xc3\xa9"};
  for (const json& value : scalars) {
    CAPTURE(value.dump());
    std::vector<std::uint8_t> ours;
    REQUIRE(plumber::detail::append_cbor_scalar(value, ours));
    const json from_ours = json::from_cbor(ours);
    CHECK(from_ours == value);
    CHECK(from_ours.type() == json::from_cbor(json::to_cbor(value)).type());
    json read;
    REQUIRE(plumber::detail::read_cbor_scalar(ours.data(), ours.size(), read));
    CHECK(read == value);
    const std::vector<std::uint8_t> theirs = json::to_cbor(value);
    REQUIRE(plumber::detail::read_cbor_scalar(theirs.data(), theirs.size(), read));
    CHECK(read == value);
    CHECK(read.type() == json::from_cbor(theirs).type());
  }
  std::vector<std::uint8_t> none;
  CHECK_FALSE(plumber::detail::append_cbor_scalar(json::array({1}), none));
  CHECK_FALSE(plumber::detail::append_cbor_scalar(json::object(), none));
  CHECK(none.empty());
  // Not one whole scalar: left to nlohmann, which reads or refuses it.
  json untouched = "kept";
  for (const std::vector<std::uint8_t>& bytes : {std::vector<std::uint8_t>{},
                                                 {0x18},
                                                 {0x01, 0x02},
                                                 {0x63, 'a', 'b'},
                                                 {0x7f, 0xff},
                                                 {0x3b, 0x80, 0, 0, 0, 0, 0, 0, 0},
                                                 {0xf9, 0x3c},
                                                 {0x82, 0x01, 0x02}}) {
    CHECK_FALSE(plumber::detail::read_cbor_scalar(bytes.data(), bytes.size(), untouched));
  }
  CHECK(untouched == "kept");
  const std::uint8_t half_one[] = {0xf9, 0x3c, 0x00}, half_nan[] = {0xf9, 0x7e, 0x00},
                     half_tiny[] = {0xf9, 0x80, 0x01};
  CHECK(parse_cbor(half_one, sizeof half_one) == 1.0);
  CHECK(std::isnan(parse_cbor(half_nan, sizeof half_nan).get<double>()));
  CHECK(parse_cbor(half_tiny, sizeof half_tiny) == -std::ldexp(1.0, -24));
  const std::uint8_t tagged[] = {0xc1, 0x01};  // a tag: left to nlohmann, which refuses it
  CHECK_THROWS_AS(parse_cbor(tagged, sizeof tagged), JsonParseError);
  const std::uint8_t two_items[] = {0x01, 0x02};
  CHECK_THROWS_AS(parse_cbor(two_items, sizeof two_items), JsonParseError);
}

TEST_CASE("GraphSpec.IntegersBeyondInt64AreRefused") {
  // An unsigned beyond 2^63 - 1 used to wrap to a negative int64.
  CHECK(
      diagnostics_of(
          R"({"id": "r", "coroutine": "range", "params": {"stop": 18446744073709551615}})") ==
      std::vector<std::string>{"g.json: /nodes/0/params/stop: param \"stop\" must be integer, not "
                               "18446744073709551615 (beyond 2^63 - 1)"});
  CHECK(diagnostics_of(
            R"({"id": "u", "coroutine": "uuid", "params": {"count": 18446744073709551615}})") ==
        std::vector<std::string>{
            "g.json: /nodes/0/params/count: param \"count\" must be integer, not "
            "18446744073709551615 (beyond 2^63 - 1)"});
  CHECK(diagnostics_of(R"({"id": "u", "coroutine": "uuid", "params": {"count": -1}})") ==
        std::vector<std::string>{"g.json: /nodes/0/params: uuid: count must be >= 0"});
  CHECK(diagnostics_of(R"({"id": "r", "coroutine": "range", "queue_size": 18446744073709551615,
                           "params": {"stop": 1}})") ==
        std::vector<std::string>{"g.json: /nodes/0/queue_size: queue_size must be between 1 and "
                                 "1000000, not 18446744073709551615"});
}

TEST_CASE("Builtins.RangeNearInt64Limits") {
  // The step past the last value overflowed: a range near 2^63 never ended.
  CHECK(drain_range(kMax - 5, kMax, 2) == std::vector<json>{kMax - 5, kMax - 3, kMax - 1});
  CHECK(drain_range(kMax - 1, kMax, kMax) == std::vector<json>{kMax - 1});
  CHECK(drain_range(kMin + 5, kMin, -2) == std::vector<json>{kMin + 5, kMin + 3, kMin + 1});
  CHECK(drain_range(kMin, kMax, kMax) == std::vector<json>{kMin, -1, kMax - 1});
  CHECK(drain_range(kMax, kMin, kMin) == std::vector<json>{kMax, -1});
  CHECK(drain_range(0, kMax, -1).empty());
}

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
