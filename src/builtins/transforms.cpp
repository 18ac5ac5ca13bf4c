// Built-in transforms, sinks and predicates.

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "builtins/builtins_detail.hpp"
#include "json_write.hpp"
#include "plumber/builtins.hpp"
#include "plumber/registry.hpp"
#include "registry/in_place_transform.hpp"
#include "sha256.hpp"

namespace plumber {
namespace detail {
namespace {

/// Applies `edit` to each value in place (no copy of the value).
template <class Edit>
class InPlaceStep final : public InPlaceTransform {
 public:
  explicit InPlaceStep(Edit edit) : edit_(std::move(edit)) {}
  void apply(Message& message) override { edit_(message); }

 private:
  Edit edit_;
};

template <class Edit>
CoroutineInfo in_place(std::string name, std::string description, bool worker_capable, Edit edit,
                       CoroutineKind kind = CoroutineKind::transform) {
  CoroutineInfo info;
  info.name = std::move(name);
  info.kind = kind;
  info.description = std::move(description);
  info.worker_capable = worker_capable;
  info.make_transform = [edit](const json&) { return std::make_unique<InPlaceStep<Edit>>(edit); };
  return info;
}

CoroutineInfo typed(CoroutineInfo info, ValueTypes accepts, ValueTypes emits) {
  info.accepts = accepts;
  info.emits = emits;
  return info;
}

CoroutineInfo same_type_out(CoroutineInfo info, ValueTypes accepts = {}) {
  info.accepts = accepts;
  info.emits_input_type = true;
  return info;
}

std::string& string_value(Message& m, const char* step) {
  if (!m.value.is_string()) {
    throw std::invalid_argument(std::string(step) + " takes a string, not " + m.value.type_name());
  }
  return m.value.get_ref<std::string&>();
}

/// Reverses by code point, so multi-byte UTF-8 characters stay whole.
void reverse_utf8(std::string& text) {
  std::reverse(text.begin(), text.end());
  // Each character is now reversed byte-wise: continuation bytes precede their lead.
  auto it = text.begin();
  while (it != text.end()) {
    auto start = it;
    while (it != text.end() && (static_cast<unsigned char>(*it) & 0xC0) == 0x80)
      ++it;
    if (it != text.end()) ++it;  // the lead byte closes the character
    std::reverse(start, it);
  }
}

std::int64_t fib(std::int64_t n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

std::int64_t integer_value(const Message& m, const char* step, std::int64_t low,
                           std::int64_t high) {
  if (!m.value.is_number_integer()) {
    throw std::invalid_argument(std::string(step) + " takes an integer, not " +
                                m.value.type_name());
  }
  const auto n = m.value.get<std::int64_t>();
  if (n < low || n > high) {
    throw std::out_of_range(std::string(step) + ": " + std::to_string(n) + " is outside [" +
                            std::to_string(low) + ", " + std::to_string(high) + "]");
  }
  return n;
}

class SleepStep final : public Transform {
 public:
  explicit SleepStep(std::chrono::milliseconds delay) : delay_(delay) {}
  bool is_async() const noexcept override { return true; }
  boost::asio::awaitable<void> process_async(std::span<Message> batch,
                                             std::vector<Message>& out) override {
    boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, delay_);
    co_await timer.async_wait(boost::asio::use_awaitable);
    for (Message& m : batch)
      out.push_back(std::move(m));
  }

 private:
  std::chrono::milliseconds delay_;
};

class ConcatStep final : public Transform {
 public:
  explicit ConcatStep(std::string separator) : separator_(std::move(separator)) {}
  void process(std::span<Message> batch, std::vector<Message>& out) override {
    for (Message& m : batch) {
      if (!m.value.is_object()) {
        throw std::invalid_argument(std::string("concat takes an object (a zip), not ") +
                                    m.value.type_name());
      }
      std::string joined;
      bool first = true;
      for (const auto& [key, part] : m.value.items()) {
        if (!first) joined += separator_;
        first = false;
        joined += part.is_string() ? part.get_ref<const std::string&>() : part.dump();
      }
      m.value = std::move(joined);
      out.push_back(std::move(m));
    }
  }

 private:
  std::string separator_;
};

class SinkStep final : public Transform {
 public:
  explicit SinkStep(bool print) : print_(print) {}
  void process(std::span<Message> batch, std::vector<Message>&) override {
    if (!print_) return;
    for (const Message& m : batch) {
      if (m.blobs.empty()) {
        write_json_line(stdout, m.value);
        continue;
      }
      // Binary data is not printed, but never dropped unseen: its size and digest.
      json line = json::object();
      line["value"] = m.value;
      line["blobs"] = json::array();
      for (const Blob& blob : m.blobs) {
        json one = json::object();
        one["size"] = blob.size();
        one["sha256"] = sha256_hex(blob.data(), blob.size());
        line["blobs"].push_back(std::move(one));
      }
      write_json_line(stdout, line);
    }
  }

 private:
  bool print_;
};

}  // namespace

void register_builtin_transforms(Registry& registry) {
  using T = ValueTypes;
  registry.add(
      same_type_out(in_place("identity", "passes each value on unchanged", true, [](Message&) {})));
  registry.add(
      same_type_out(in_place("reverse", "reverses a string (by character) or an array", true,
                             [](Message& m) {
                               if (m.value.is_array()) {
                                 std::reverse(m.value.begin(), m.value.end());
                               } else {
                                 reverse_utf8(string_value(m, "reverse"));
                               }
                             }),
                    {T::string, T::array}));
  registry.add(typed(in_place("upper", "upper-cases a string (ASCII letters)", true,
                              [](Message& m) {
                                for (char& c : string_value(m, "upper"))
                                  c = static_cast<char>(
                                      std::toupper(static_cast<unsigned char>(c)));
                              }),
                     {T::string}, {T::string}));
  registry.add(typed(in_place("lower", "lower-cases a string (ASCII letters)", true,
                              [](Message& m) {
                                for (char& c : string_value(m, "lower"))
                                  c = static_cast<char>(
                                      std::tolower(static_cast<unsigned char>(c)));
                              }),
                     {T::string}, {T::string}));
  registry.add(typed(in_place("fib", "naive recursive Fibonacci of an integer (CPU-bound)", true,
                              [](Message& m) { m.value = fib(integer_value(m, "fib", 0, 92)); }),
                     {T::number}, {T::number}));
  registry.add(typed(in_place("sum_squares", "sum of i*i for i below n (CPU-bound)", true,
                              [](Message& m) {
                                const auto n = static_cast<std::uint64_t>(
                                    integer_value(m, "sum_squares", 0, 3'000'000));
                                std::uint64_t sum = 0;
                                for (std::uint64_t i = 0; i < n; ++i)
                                  sum += i * i;
                                m.value = sum;
                              }),
                     {T::number}, {T::number}));
  registry.add(typed(
      in_place("sha256", "hex SHA-256 of a string value, or of the first blob", true,
               [](Message& m) {
                 if (m.value.is_string()) {
                   const auto& text = m.value.get_ref<const std::string&>();
                   m.value = sha256_hex(text.data(), text.size());
                 } else if (!m.blobs.empty()) {
                   m.value = sha256_hex(m.blobs.front().data(), m.blobs.front().size());
                 } else {
                   throw std::invalid_argument(
                       std::string("sha256 takes a string or a blob, not ") + m.value.type_name());
                 }
               }),
      {T::string, T::blob}, {T::string}));

  registry.add(typed(in_place("to_blob",
                              "the UTF-8 bytes of a string value as a blob; the value becomes "
                              "{\"content_type\": \"text/plain; charset=utf-8\", \"size\"}",
                              true,
                              [](Message& m) {
                                const std::string& text = string_value(m, "to_blob");
                                std::vector<std::byte> bytes(text.size());
                                std::memcpy(bytes.data(), text.data(), text.size());
                                m.blobs.emplace_back(std::move(bytes));
                                json value = json::object();
                                value["content_type"] = "text/plain; charset=utf-8";
                                value["size"] = text.size();
                                m.value = std::move(value);
                              }),
                     {T::string}, {T::object, T::blob}));

  CoroutineInfo sleep;
  sleep.name = "sleep";
  sleep.description = "passes each value on after `ms` milliseconds (an async timer)";
  sleep.params = {{"ms", ParamType::integer, false, 10, "delay in milliseconds"}};
  sleep.check_params = [](const json& p) {
    // A deadline of now + ms must not overflow the clock: at most a year.
    constexpr std::int64_t kYear = 365LL * 24 * 3600 * 1000;
    const auto ms = p.at("ms").get<std::int64_t>();
    if (ms < 0 || ms > kYear) {
      throw std::invalid_argument("sleep: ms must be between 0 and " + std::to_string(kYear) +
                                  " (a year), not " + std::to_string(ms));
    }
  };
  sleep.emits_input_type = true;
  sleep.make_transform = [](const json& p) {
    return std::make_unique<SleepStep>(std::chrono::milliseconds(p.at("ms").get<std::int64_t>()));
  };
  registry.add(std::move(sleep));

  CoroutineInfo concat;
  concat.name = "concat";
  concat.description = "joins the string values of a zipped object, in predecessor order";
  concat.worker_capable = true;
  concat.accepts = {ValueTypes::object};
  concat.emits = {ValueTypes::string};
  concat.params = {{"separator", ParamType::string, false, "", "put between the parts"}};
  concat.make_transform = [](const json& p) {
    return std::make_unique<ConcatStep>(p.at("separator").get<std::string>());
  };
  registry.add(std::move(concat));

  for (bool print : {true, false}) {
    CoroutineInfo sink;
    sink.name = print ? "print" : "discard";
    sink.kind = CoroutineKind::sink;
    sink.description = print ? "writes each value as a JSON line to stdout" : "drops every value";
    sink.make_transform = [print](const json&) { return std::make_unique<SinkStep>(print); };
    sink.capabilities.writes_stdout = print;
    registry.add(std::move(sink));
  }

  registry.add_predicate(
      {"is_string", "the value is a string", [](const json& v) { return v.is_string(); }});
  registry.add_predicate(
      {"is_number", "the value is a number", [](const json& v) { return v.is_number(); }});
  registry.add_predicate(
      {"is_object", "the value is an object", [](const json& v) { return v.is_object(); }});
  registry.add_predicate({"is_even", "the value is an even integer", [](const json& v) {
                            return v.is_number_integer() && v.get<std::int64_t>() % 2 == 0;
                          }});
  registry.add_predicate({"is_odd", "the value is an odd integer", [](const json& v) {
                            return v.is_number_integer() && v.get<std::int64_t>() % 2 != 0;
                          }});
}

}  // namespace detail

void register_builtins(Registry& registry) {
  detail::register_builtin_sources(registry);
  detail::register_builtin_transforms(registry);
  detail::register_builtin_exec(registry);
}

}  // namespace plumber
