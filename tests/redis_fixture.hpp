#pragma once
/// For the remote-node tests: a real redis-server on a free loopback port with
/// a temporary directory, and background processes (workers, hosts) to kill.
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace plumber::test {

/// A process started in the background, its stdout and stderr in files.
class Background {
 public:
  Background(const std::vector<std::string>& args, const std::filesystem::path& output_prefix);
  ~Background();
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  pid_t pid() const noexcept { return pid_; }
  void signal(int number) const;
  /// Waits for the exit (a hang guard: -1 after `limit`); 128 + N when killed by signal N.
  int wait(std::chrono::seconds limit = std::chrono::seconds(120));
  std::string out() const;
  std::string err() const;
  bool running();

 private:
  pid_t pid_ = 0;
  int status_ = -1;
  bool reaped_ = false;
  std::filesystem::path out_, err_;
};

/// redis-server on 127.0.0.1, data (appendonly, fsync always) in a temporary directory.
class RedisServer {
 public:
  RedisServer();
  ~RedisServer();
  int port() const noexcept { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  const std::filesystem::path& dir() const noexcept { return dir_; }
  void kill9();
  /// Starts again on the same port and data directory.
  void restart();
  /// Runs a command with redis-cli and returns its output (for assertions).
  std::string cli(const std::vector<std::string>& args) const;

 private:
  bool start();
  std::filesystem::path dir_;
  int port_ = 0;
  pid_t pid_ = 0;
};

/// Waits until `ready` returns true (a hang guard: false after `limit`).
template <class Ready>
bool wait_until(Ready ready, std::chrono::seconds limit = std::chrono::seconds(60)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (ready()) return true;
    struct timespec t {
      0, 20'000'000
    };
    nanosleep(&t, nullptr);
  }
  return ready();
}

}  // namespace plumber::test
