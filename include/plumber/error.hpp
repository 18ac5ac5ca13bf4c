#pragma once
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace plumber {

/// Run-time error codes, reported as `std::error_code`s and in error records.
enum class errc {
  step_failed = 1,   // the step threw; the record carries its message
  timed_out,         // timeout_ms, or the message's deadline, passed
  cancelled,         // stop(false) cancelled the message
  pipeline_stopped,  // the pipeline no longer accepts input
  input_closed,      // input was fed after end_input()
  not_started,       // process() before start()
};

const std::error_category& error_category() noexcept;
std::error_code make_error_code(errc e) noexcept;

/// One problem found while loading a graph or a plugin.
struct Diagnostic {
  std::string code;     ///< stable id, e.g. "graph.unknown_coroutine"
  std::string pointer;  ///< JSON pointer of the culprit, e.g. "/nodes/3/coroutine"
  std::string message;  ///< what is wrong
  std::string hint;     ///< how to fix it; may be empty

  /// `FILE: POINTER: message (hint)`; FILE is omitted when empty.
  std::string format(const std::string& file = {}) const;
};

/// Thrown when a graph does not load; carries every diagnostic, not just the first.
class GraphError : public std::runtime_error {
 public:
  GraphError(std::string file, std::vector<Diagnostic> diagnostics);
  const std::string& file() const noexcept { return file_; }
  const std::vector<Diagnostic>& diagnostics() const noexcept { return diagnostics_; }

 private:
  std::string file_;
  std::vector<Diagnostic> diagnostics_;
};

/// Thrown for a misuse of the API or a registry conflict (a programming error).
class UsageError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

}  // namespace plumber

template <>
struct std::is_error_code_enum<plumber::errc> : std::true_type {};
