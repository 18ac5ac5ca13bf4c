// Hostile input, unit level: the JSON entry point (src/json_parse.*), integer
// params at the edges of int64, and the range source near 2^63 (issue 12).
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <doctest/doctest.h>

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
