#include "cli/progress.hpp"

#include <sys/stat.h>
#include <unistd.h>

namespace plumber::cli {

ProgressLine::ProgressLine(bool enabled) : enabled_(enabled) {
  if (!enabled_) return;
  terminal_ = ::isatty(STDERR_FILENO) != 0;
  struct stat out {};
  struct stat err {};
  shared_ = ::fstat(STDOUT_FILENO, &out) == 0 && ::fstat(STDERR_FILENO, &err) == 0 &&
            out.st_dev == err.st_dev && out.st_ino == err.st_ino;
}

std::unique_lock<std::mutex> ProgressLine::before_write(std::FILE* stream) {
  if (!enabled_) return {};
  std::unique_lock lock(mutex_);
  if (drawn_ && (stream == stderr || shared_)) erase();
  return lock;
}

void ProgressLine::erase() {
  // On a terminal the line is cleared; in a file it is ended, so that what
  // follows starts a line of its own.
  std::fputs(terminal_ ? "\r\033[K" : "\n", stderr);
  std::fflush(stderr);
  drawn_ = false;
}

void ProgressLine::draw(const std::string& text) {
  if (!enabled_) return;
  std::lock_guard lock(mutex_);
  std::fflush(stdout);
  std::fputs(("\r" + text + (terminal_ ? "\033[K" : "")).c_str(), stderr);
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressLine::finish(const std::string& text) {
  if (!enabled_) return;
  draw(text);
  std::lock_guard lock(mutex_);
  std::fputs("\n", stderr);
  std::fflush(stderr);
  drawn_ = false;
}

std::string human_bytes(double bytes) {
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  std::size_t unit = 0;
  while (bytes >= 1024 && unit + 1 < std::size(units)) {
    bytes /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", bytes, units[unit]);
  return text;
}

}  // namespace plumber::cli
