#pragma once
// Plumber's logs: spdlog's default logger, as text with timestamps and levels
// or as one JSON object a line, with structured fields (node, run, worker pid)
// that both formats show.
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace plumber::detail {

/// How log lines look.
enum class LogFormat {
  text,  ///< `2024-05-01T12:00:00.123 warn  node=sq pid=4242 message`
  json,  ///< `{"time":"...","level":"warn","message":"...","node":"sq","worker_pid":4242}`
};

/// What a log line is about; empty or 0 fields are left out.
struct LogFields {
  std::string_view node{};
  std::string_view run{};
  int worker_pid = 0;
};

/// Sets spdlog's default logger: stderr, in `format`, at `level`.
void configure_logging(LogFormat format, spdlog::level::level_enum level);

/// Logs `message` with `fields` (through spdlog's default logger).
void log(spdlog::level::level_enum level, const LogFields& fields, std::string_view message);

/// Formats and logs, with fields.
template <class... Args>
void log(spdlog::level::level_enum level, const LogFields& fields,
         spdlog::format_string_t<Args...> format, Args&&... args) {
  if (!spdlog::should_log(level)) return;
  log(level, fields, std::string_view(fmt::format(format, std::forward<Args>(args)...)));
}

}  // namespace plumber::detail
