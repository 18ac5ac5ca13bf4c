#include "log.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <nlohmann/json.hpp>

namespace plumber::detail {
namespace {

// The fields of the line being logged on this thread: log() sets them around
// its spdlog call, and the formatters (which run in that call) read them.
thread_local const LogFields* current_fields = nullptr;

/// `%*` in the text pattern: "node=X run=Y pid=Z " for the fields that are set.
class FieldsFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const LogFields* f = current_fields;
    if (f == nullptr) return;
    std::string text;
    if (!f->run.empty()) text += "run=" + std::string(f->run) + ' ';
    if (!f->node.empty()) text += "node=" + std::string(f->node) + ' ';
    if (f->worker_pid != 0) text += "pid=" + std::to_string(f->worker_pid) + ' ';
    dest.append(text.data(), text.data() + text.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<FieldsFlag>();
  }
};

/// One JSON object a line: time (UTC, RFC 3339), level, message, then the fields.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    nlohmann::ordered_json line = nlohmann::ordered_json::object();
    line["time"] = rfc3339(msg.time);
    line["level"] = std::string(spdlog::level::to_string_view(msg.level).data(),
                                spdlog::level::to_string_view(msg.level).size());
    line["message"] = std::string(msg.payload.data(), msg.payload.size());
    if (const LogFields* f = current_fields) {
      if (!f->run.empty()) line["run"] = std::string(f->run);
      if (!f->node.empty()) line["node"] = std::string(f->node);
      if (f->worker_pid != 0) line["worker_pid"] = f->worker_pid;
    }
    line["pid"] = static_cast<long>(::getpid());
    const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(text.data(), text.data() + text.size());
    dest.push_back('\n');
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }

 private:
  static std::string rfc3339(spdlog::log_clock::time_point time) {
    const auto since_epoch = time.time_since_epoch();
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
    const auto millis =
        std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds).count();
    const std::time_t t = seconds.count();
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(millis));
    return buffer;
  }
};

}  // namespace

void configure_logging(LogFormat format, spdlog::level::level_enum level) {
  spdlog::drop("plumber");
  auto logger = spdlog::stderr_color_mt("plumber");
  if (format == LogFormat::json) {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<FieldsFlag>('*').set_pattern(
        "%Y-%m-%dT%H:%M:%S.%e plumber[%P] %^%l%$: %*%v");
    logger->set_formatter(std::move(formatter));
  }
  logger->set_level(level);
  spdlog::set_default_logger(std::move(logger));
  spdlog::set_level(level);
}

void log(spdlog::level::level_enum level, const LogFields& fields, std::string_view message) {
  const LogFields* outer = current_fields;
  current_fields = &fields;
  spdlog::log(level, "{}", message);
  current_fields = outer;
}

}  // namespace plumber::detail
