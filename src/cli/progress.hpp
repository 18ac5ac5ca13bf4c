#pragma once
// `plumber run`'s progress line: on stderr only, redrawn in place on a
// terminal, and kept apart from the data lines on stdout and the records on
// stderr, so that no line is ever mixed with it.
#include <cstdio>
#include <mutex>
#include <string>

namespace plumber::cli {

class ProgressLine {
 public:
  /// `enabled` false: every call does nothing (and takes no lock).
  explicit ProgressLine(bool enabled);

  bool enabled() const noexcept { return enabled_; }

  /// Call before writing whole lines to `stream` (stdout or stderr), and write
  /// them while holding what it returns: the progress line is erased first when
  /// it is drawn where they go.
  [[nodiscard]] std::unique_lock<std::mutex> before_write(std::FILE* stream);

  /// Draws `text` in place of the progress line, after flushing stdout so that
  /// the data lines come out first.
  void draw(const std::string& text);
  /// Draws `text` a last time and ends the line.
  void finish(const std::string& text);

 private:
  void erase();

  const bool enabled_;
  bool terminal_ = false;  ///< stderr is a terminal: redraw in place
  bool shared_ = false;    ///< stdout goes where stderr goes
  bool drawn_ = false;     ///< the progress line is on stderr, unfinished
  std::mutex mutex_;
};

/// "12.5 MiB", "512 B".
std::string human_bytes(double bytes);

}  // namespace plumber::cli
