// JSON lines in and out: parse_json (its fast path against nlohmann's parser),
// LineReader (blocks cut into lines), write_json_line.
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "json_parse.hpp"
#include "json_write.hpp"
#include "line_reader.hpp"
#include "plumber/json.hpp"

using plumber::json;
using plumber::detail::JsonParseError;
using plumber::detail::LineReader;
using plumber::detail::parse_json;

namespace {

/// Same value and same types all the way down (json's == calls 1 and 1u equal).
bool same(const json& a, const json& b) {
  if (a.type() != b.type() || a.size() != b.size()) return false;
  if (a.is_object()) {
    for (auto x = a.begin(), y = b.begin(); x != a.end(); ++x, ++y) {
      if (x.key() != y.key() || !same(*x, *y)) return false;
    }
    return true;
  }
  if (a.is_array()) {
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (!same(a[i], b[i])) return false;
    }
    return true;
  }
  if (a.is_number_float()) return a.dump() == b.dump();  // -0.0 vs 0.0, NaN never
  return a == b;
}

/// Random JSON text, valid unless mutated: every kind of value, white space,
/// escapes, UTF-8, numbers near the edges, duplicate keys.
class TextMaker {
 public:
  explicit TextMaker(std::uint32_t seed) : random_(seed) {}

  std::string make() {
    std::string text;
    space(text);
    value(text, 0);
    space(text);
    return text;
  }

  /// `text` with one byte deleted, inserted or replaced.
  std::string mutate(std::string text) {
    const std::size_t at = pick(text.size() + 1);
    static const std::string bytes = "{}[]\",:\\ 0123456789.eE+-tfnul\x01\x7f\xc3\xa9\xed\xa0\x80";
    const char b = bytes[pick(bytes.size())];
    switch (pick(3)) {
      case 0:
        if (at < text.size()) text.erase(at, 1);
        break;
      case 1:
        text.insert(at, 1, b);
        break;
      default:
        if (at < text.size()) text[at] = b;
    }
    return text;
  }

 private:
  std::size_t pick(std::size_t n) {
    return std::uniform_int_distribution<std::size_t>(0, n - 1)(random_);
  }

  void space(std::string& text) {
    static const char* spaces[] = {"", "", "", " ", "\t", "\r\n", "  \n "};
    text += spaces[pick(7)];
  }

  void value(std::string& text, int depth) {
    switch (pick(depth > 5 ? 6 : 8)) {
      case 0: {
        static const char* literals[] = {"true", "false", "null"};
        text += literals[pick(3)];
        break;
      }
      case 1:
      case 2:
        number(text);
        break;
      case 3:
      case 4:
      case 5:
        string(text);
        break;
      case 6: {
        text += '[';
        const std::size_t n = pick(5);
        for (std::size_t i = 0; i < n; ++i) {
          if (i) text += ',';
          space(text);
          value(text, depth + 1);
          space(text);
        }
        text += ']';
        break;
      }
      default: {
        text += '{';
        const std::size_t n = pick(4) == 0 ? pick(40) : pick(6);  // sometimes many members
        for (std::size_t i = 0; i < n; ++i) {
          if (i) text += ',';
          space(text);
          if (pick(8) == 0) {
            text += "\"dup\"";
          } else {
            string(text);
          }
          space(text);
          text += ':';
          space(text);
          value(text, depth + 1);
        }
        text += '}';
      }
    }
  }

  void number(std::string& text) {
    static const char* edges[] = {"0",
                                  "-0",
                                  "-0.0",
                                  "9223372036854775807",
                                  "9223372036854775808",
                                  "-9223372036854775808",
                                  "-9223372036854775809",
                                  "18446744073709551615",
                                  "18446744073709551616",
                                  "123456789012345678",
                                  "1234567890123456789",
                                  "1e308",
                                  "1e309",
                                  "-1e999",
                                  "1e-400",
                                  "5e-324",
                                  "2.2250738585072011e-308",
                                  "0.1",
                                  "1E+2",
                                  "1.5e-3",
                                  "3.141592653589793238462643383279"};
    if (pick(3) == 0) {
      text += edges[pick(sizeof edges / sizeof edges[0])];
      return;
    }
    if (pick(2)) text += '-';
    text += std::to_string(pick(1'000'000));
    if (pick(3) == 0) text += "." + std::to_string(pick(100'000));
    if (pick(5) == 0) text += (pick(2) ? "e" : "E-") + std::to_string(pick(30));
  }

  void string(std::string& text) {
    static const char* pieces[] = {"a",
                                   "key",
                                   " ",
                                   "\\\"",
                                   "\\\\",
                                   "\\/",
                                   "\\b",
                                   "\\f",
                                   "\\n",
                                   "\\r",
                                   "\\t",
                                   "\\u0041",
                                   "\\u00e9",
                                   "\\u0000",
                                   "\\ud83d\\ude00",
                                   "\\uD834\\uDD1E",
                                   "\xc3\xa9",
                                   "\xe2\x82\xac",
                                   "\xf0\x9f\x98\x80",
                                   "\x7f",
                                   "\\ud800",
                                   "\\udc00",
                                   "\xc0\xaf",
                                   "\xed\xa0\x80",
                                   "\xf4\x90\x80\x80",
                                   "\xe0\x80\x80",
                                   "\x01"};
    text += '"';
    const std::size_t n = pick(6);
    for (std::size_t i = 0; i < n; ++i) {
      // Mostly well-formed pieces; the last six are refused by JSON.
      const std::size_t count = sizeof pieces / sizeof pieces[0];
      text += pieces[pick(8) == 0 ? pick(count) : pick(count - 7)];
    }
    text += '"';
  }

  std::mt19937 random_;
};

/// The lines LineReader cuts from `text`, fed through a pipe in pieces of `chunk` bytes.
std::vector<std::string> lines_of(const std::string& text, std::size_t chunk,
                                  std::size_t block_size) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::thread writer([&] {
    for (std::size_t at = 0; at < text.size(); at += chunk) {
      const std::size_t n = std::min(chunk, text.size() - at);
      for (std::size_t done = 0; done < n;) {
        const ssize_t w = ::write(fds[1], text.data() + at + done, n - done);
        if (w <= 0) break;
        done += static_cast<std::size_t>(w);
      }
    }
    ::close(fds[1]);
  });
  std::vector<std::string> lines;
  LineReader reader(fds[0], block_size);
  while (reader.read_some([&](std::string_view line) { lines.emplace_back(line); })) {
  }
  writer.join();
  ::close(fds[0]);
  CHECK(reader.bytes_read() == text.size());
  return lines;
}

}  // namespace

TEST_CASE("Json.ParseMatchesNlohmann") {
  // The fast path must build exactly nlohmann's value, and refuse exactly what
  // nlohmann refuses (then parse_json's error comes from nlohmann's parser).
  TextMaker maker(12345);
  int valid = 0, invalid = 0;
  for (int i = 0; i < 20'000; ++i) {
    std::string text = maker.make();
    if (i % 2) text = maker.mutate(std::move(text));
    CAPTURE(text);
    json expected;
    bool expected_ok = true;
    try {
      expected = json::parse(text);
    } catch (const nlohmann::json::exception&) {
      expected_ok = false;
    }
    json got;
    bool got_ok = true;
    try {
      got = parse_json(text);
    } catch (const JsonParseError&) {
      got_ok = false;
    }
    REQUIRE(got_ok == expected_ok);
    if (got_ok) {
      REQUIRE(same(got, expected));
      ++valid;
    } else {
      ++invalid;
    }
  }
  CHECK(valid > 5'000);  // both kinds were tried
  CHECK(invalid > 2'000);
}

TEST_CASE("Json.WriteMatchesDump") {
  // The direct writer must write exactly what dump() writes, and hand it what
  // it does not handle itself (invalid UTF-8, binary, NaN).
  const auto dumped = [](const json& value) {
    return value.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  };
  TextMaker maker(777);
  int checked = 0;
  for (int i = 0; i < 20'000; ++i) {
    const std::string text = maker.make();
    json value;
    try {
      value = json::parse(text);
    } catch (const nlohmann::json::exception&) {
      continue;
    }
    CAPTURE(text);
    std::string line = "kept:";
    plumber::detail::append_json_line(line, value);
    REQUIRE(line == "kept:" + dumped(value));
    ++checked;
  }
  CHECK(checked > 10'000);
  const json odd[] = {json("bad \xff\xfe utf-8"),
                      json{{"k\xc3", 1}},
                      json::binary({1, 2, 3}),
                      json(std::nan("")),
                      json(-std::numeric_limits<double>::infinity()),
                      json(-0.0),
                      json(1e100),
                      json(std::numeric_limits<std::int64_t>::min()),
                      json(std::numeric_limits<std::uint64_t>::max()),
                      json(std::string("\x00\x1f\x7f\"\\/", 7))};
  for (const json& value : odd) {
    std::string line;
    plumber::detail::append_json_line(line, value);
    CHECK(line == dumped(value));
  }
}

TEST_CASE("Json.ParseKeepsTheLastDuplicateInPlace") {
  CHECK(parse_json(R"({"a":1,"b":2,"a":3})").dump() == R"({"a":3,"b":2})");
  CHECK(parse_json(R"({"o":{"x":[1,{"x":1,"x":2}],"x":0}})").dump() == R"({"o":{"x":0}})");
  // A failed parse leaves nothing behind for the next one on this thread.
  CHECK_THROWS_AS(parse_json(R"({"a":{"b":{"c":1,)"), JsonParseError);
  CHECK(parse_json(R"({"z":{"y":{}}})").dump() == R"({"z":{"y":{}}})");
}

TEST_CASE("LineReader.CutsBlocksIntoLines") {
  SUBCASE("lines across reads and blocks, CRLF kept, last line without a newline") {
    const std::string text = "one\r\ntwo\n\nthree";
    for (std::size_t chunk : {1, 2, 3, 100}) {
      CAPTURE(chunk);
      CHECK(lines_of(text, chunk, 4) == std::vector<std::string>{"one\r", "two", "", "three"});
    }
  }
  SUBCASE("a final newline ends the last line, it starts no other") {
    CHECK(lines_of("a\nb\n", 100, 1024) == std::vector<std::string>{"a", "b"});
    CHECK(lines_of("", 100, 1024).empty());
    CHECK(lines_of("\n", 100, 1024) == std::vector<std::string>{""});
  }
  SUBCASE("a line much longer than a block") {
    const std::string long_line(3 << 20, 'x');
    const auto lines = lines_of("a\n" + long_line + "\nb", 65536, 4096);
    REQUIRE(lines.size() == 3);
    CHECK(lines[1] == long_line);
    CHECK(lines[2] == "b");
  }
}

TEST_CASE("Json.WriteLineReplacesInvalidUtf8") {
  std::FILE* file = std::tmpfile();
  REQUIRE(file != nullptr);
  plumber::detail::write_json_line(file, json{{"a", "x\xff"}, {"b", {1, 2.5, nullptr}}});
  plumber::detail::write_json_line(file, json("second"));
  std::rewind(file);
  char text[128] = {};
  const std::size_t n = std::fread(text, 1, sizeof text - 1, file);
  std::fclose(file);
  CHECK(std::string(text, n) == "{\"a\":\"x\xef\xbf\xbd\",\"b\":[1,2.5,null]}\n\"second\"\n");
}
