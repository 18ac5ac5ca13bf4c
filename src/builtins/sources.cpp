// Built-in sources: input, lines, jsonl, range, values, uuid (files: files_source.cpp).
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>

#include <boost/uuid/random_generator.hpp>
#include <boost/uuid/uuid_io.hpp>

#include "builtins/builtins_detail.hpp"
#include "json_parse.hpp"
#include "plumber/registry.hpp"

namespace plumber::detail {
namespace {

/// Stands for the `input` node; the runtime feeds it what the host sends.
class InputSource final : public Source {
 public:
  std::optional<json> next() override { return std::nullopt; }
};

/// Reads a file (or stdin for "-") line by line.
class LineSource final : public Source {
 public:
  LineSource(std::string path, bool parse) : path_(std::move(path)), parse_(parse) {}

  void on_start() override {
    if (path_ == "-") return;
    file_.open(path_);
    if (!file_) throw std::runtime_error("cannot open " + path_ + ": " + std::strerror(errno));
  }
  // stdin, a FIFO or a terminal may block for ever: read them off the event loop.
  bool is_blocking() const noexcept override {
    if (path_ == "-") return true;
    struct stat info {};
    return ::stat(path_.c_str(), &info) != 0 || !S_ISREG(info.st_mode);
  }

  std::optional<json> next() override {
    std::istream& in = path_ == "-" ? std::cin : file_;
    std::string line;
    while (std::getline(in, line)) {
      ++line_number_;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!parse_) return json(std::move(line));
      if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank line
      try {
        return detail::parse_json(line);
      } catch (const detail::JsonParseError& e) {
        throw SourceItemError((path_ == "-" ? std::string("stdin") : path_) + ":" +
                              std::to_string(line_number_) + ": malformed JSON: " + e.what());
      }
    }
    if (in.bad()) throw std::runtime_error("reading " + path_ + ": " + std::strerror(errno));
    return std::nullopt;
  }

 private:
  std::string path_;
  bool parse_;
  std::ifstream file_;
  std::uint64_t line_number_ = 0;
};

class RangeSource final : public Source {
 public:
  RangeSource(std::int64_t start, std::int64_t stop, std::int64_t step)
      : next_(start), step_(step), size_(count(start, stop, step)), remaining_(size_) {}
  std::optional<json> next() override {
    if (remaining_ == 0) return std::nullopt;
    const std::int64_t value = next_;
    // Step only towards a value that is emitted: near 2^63 the step past the
    // last one would overflow.
    if (--remaining_ > 0) next_ += step_;
    return json(value);
  }
  std::optional<std::uint64_t> size_hint() const override { return size_; }

 private:
  /// How many values lie in [start, stop) (or (stop, start]), in unsigned
  /// arithmetic: stop - start may not fit an int64.
  static std::uint64_t count(std::int64_t start, std::int64_t stop, std::int64_t step) {
    if (step > 0 ? stop <= start : stop >= start) return 0;
    const auto u = [](std::int64_t v) { return static_cast<std::uint64_t>(v); };
    const std::uint64_t span = step > 0 ? u(stop) - u(start) : u(start) - u(stop);
    const std::uint64_t stride = step > 0 ? u(step) : std::uint64_t{0} - u(step);
    return span / stride + (span % stride != 0 ? 1 : 0);
  }

  std::int64_t next_, step_;
  std::uint64_t size_, remaining_;
};

class ValuesSource final : public Source {
 public:
  explicit ValuesSource(json values) : values_(std::move(values)) {}
  std::optional<json> next() override {
    if (index_ >= values_.size()) return std::nullopt;
    return values_[index_++];
  }
  std::optional<std::uint64_t> size_hint() const override { return values_.size(); }

 private:
  json values_;
  std::size_t index_ = 0;
};

class UuidSource final : public Source {
 public:
  explicit UuidSource(std::uint64_t count) : remaining_(count), count_(count) {}
  std::optional<json> next() override {
    if (remaining_ == 0) return std::nullopt;
    --remaining_;
    return json(boost::uuids::to_string(generate_()));
  }
  std::optional<std::uint64_t> size_hint() const override { return count_; }

 private:
  std::uint64_t remaining_, count_;
  boost::uuids::random_generator generate_;
};

CoroutineInfo source_info(std::string name, std::string description,
                          std::vector<ParamSpec> params) {
  CoroutineInfo info;
  info.name = std::move(name);
  info.kind = CoroutineKind::source;
  info.description = std::move(description);
  info.params = std::move(params);
  return info;
}

}  // namespace

void register_builtin_sources(Registry& registry) {
  auto input = source_info(
      "input", "emits the values the host feeds (stdin or --input under `plumber run`)", {});
  input.make_source = [](const json&) { return std::make_unique<InputSource>(); };
  input.capabilities.host_fed = true;
  registry.add(std::move(input));

  const ParamSpec path{"path", ParamType::string, false, "-", "file to read; \"-\" is stdin"};
  auto lines = source_info("lines", "emits each line of a file as a JSON string", {path});
  lines.make_source = [](const json& p) {
    return std::make_unique<LineSource>(p.at("path").get<std::string>(), false);
  };
  lines.emits = {ValueTypes::string};
  lines.capabilities.reads_files = true;
  registry.add(std::move(lines));

  auto jsonl = source_info("jsonl", "emits each line of a file parsed as JSON", {path});
  jsonl.make_source = [](const json& p) {
    return std::make_unique<LineSource>(p.at("path").get<std::string>(), true);
  };
  jsonl.capabilities.reads_files = true;
  registry.add(std::move(jsonl));

  auto range = source_info("range", "emits the integers start, start+step, ... below stop",
                           {{"start", ParamType::integer, false, 0, "first value"},
                            {"stop", ParamType::integer, true, nullptr, "bound, not emitted"},
                            {"step", ParamType::integer, false, 1, "increment, not 0"}});
  range.check_params = [](const json& p) {
    if (p.at("step").get<std::int64_t>() == 0)
      throw std::invalid_argument("range: step must not be 0");
  };
  range.make_source = [](const json& p) {
    return std::make_unique<RangeSource>(p.at("start").get<std::int64_t>(),
                                         p.at("stop").get<std::int64_t>(),
                                         p.at("step").get<std::int64_t>());
  };
  range.emits = {ValueTypes::number};
  registry.add(std::move(range));

  auto values = source_info("values", "emits each element of an array",
                            {{"values", ParamType::array, true, nullptr, "the values to emit"}});
  values.make_source = [](const json& p) { return std::make_unique<ValuesSource>(p.at("values")); };
  registry.add(std::move(values));

  auto uuid = source_info("uuid", "emits `count` random UUID strings",
                          {{"count", ParamType::integer, true, nullptr, "how many"}});
  uuid.check_params = [](const json& p) {
    if (p.at("count").get<std::int64_t>() < 0)
      throw std::invalid_argument("uuid: count must be >= 0");
  };
  uuid.make_source = [](const json& p) {
    return std::make_unique<UuidSource>(p.at("count").get<std::uint64_t>());
  };
  uuid.emits = {ValueTypes::string};
  registry.add(std::move(uuid));

  register_files_source(registry);
}

}  // namespace plumber::detail
