#pragma once
/// Runs a program to completion and captures what it wrote (for the CLI tests).
#include <chrono>
#include <string>
#include <vector>

namespace plumber::test {

struct ProcessResult {
  /// The exit status; 128 + N when killed by signal N; -1 when it timed out.
  int exit_code = -1;
  std::string out;  ///< everything written to stdout
  std::string err;  ///< everything written to stderr
};

/// Spawns `args[0]` with `args` (no shell), stdin read from `stdin_path`, and
/// waits for it to exit. Kills it after `limit` and reports exit_code -1.
ProcessResult run_process(const std::vector<std::string>& args,
                          const std::string& stdin_path = "/dev/null",
                          std::chrono::seconds limit = std::chrono::seconds(60));

/// Splits text into lines (without their '\n'); a last line without '\n' counts.
std::vector<std::string> split_lines(const std::string& text);

}  // namespace plumber::test
