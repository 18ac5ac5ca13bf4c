#include "workers/worker_launch.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <mutex>
#include <system_error>
#include <thread>

#include "workers/shm.hpp"

extern char** environ;

namespace plumber::detail {
namespace {

constexpr const char* kEnvironmentVariable = "PLUMBER_WORKER";

std::vector<std::string> own_arguments() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  std::string current;
  for (char c : all) {
    if (c == '\0') {
      args.push_back(std::move(current));
      current.clear();
    } else {
      current += c;
    }
  }
  if (!current.empty()) args.push_back(std::move(current));
  return args;
}

/// Runs `spawn` on one thread that lives as long as the process. A worker asks
/// for SIGKILL when its parent dies (PR_SET_PDEATHSIG), but "parent" is the
/// *thread* that forked it: spawned from a pool thread that later ends, the
/// worker would be killed with it.
pid_t on_launcher_thread(std::function<pid_t()> spawn) {
  struct Launcher {
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<std::packaged_task<pid_t()>> tasks;
    Launcher() {
      std::thread([this] {
        for (;;) {
          std::unique_lock lock(mutex);
          wake.wait(lock, [this] { return !tasks.empty(); });
          auto task = std::move(tasks.front());
          tasks.pop_front();
          lock.unlock();
          task();
        }
      }).detach();
    }
  };
  static Launcher* launcher = new Launcher;  // never destroyed: its thread outlives main
  std::packaged_task<pid_t()> task(std::move(spawn));
  std::future<pid_t> pid = task.get_future();
  {
    std::lock_guard lock(launcher->mutex);
    launcher->tasks.push_back(std::move(task));
  }
  launcher->wake.notify_one();
  return pid.get();
}

struct SpawnActions {
  posix_spawn_file_actions_t actions;
  SpawnActions() { posix_spawn_file_actions_init(&actions); }
  ~SpawnActions() { posix_spawn_file_actions_destroy(&actions); }
};

}  // namespace

std::optional<WorkerFds> worker_fds_from_environment() {
  const char* text = std::getenv(kEnvironmentVariable);
  if (!text) return std::nullopt;
  WorkerFds fds;
  int host = 0;
  if (std::sscanf(text, "%d:%d:%d:%d:%d:%d", &fds.segment, &fds.requests, &fds.results, &fds.parent,
                  &fds.arena, &host) != 6) {
    return std::nullopt;
  }
  ::unsetenv(kEnvironmentVariable);
  // Die with the host whatever this worker is doing (a step that never ends
  // does not read the lifeline). The host may have died before this call.
  (void)::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != host) ::_exit(1);
  return fds;
}

int lifeline_fd() {
  static int read_end = [] {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno("pipe2 (worker lifeline)");
    return fds[0];  // fds[1] stays open, unused, for the life of the process
  }();
  return read_end;
}

pid_t spawn_worker_process(const WorkerFds& fds, int output_fd) {
  static const std::vector<std::string> args = own_arguments();
  std::vector<char*> argv;
  for (const auto& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  const std::string variable = std::string(kEnvironmentVariable) + "=" +
                               std::to_string(fds.segment) + ":" + std::to_string(fds.requests) +
                               ":" + std::to_string(fds.results) + ":" +
                               std::to_string(fds.parent) + ":" + std::to_string(fds.arena) + ":" +
                               std::to_string(::getpid());
  std::vector<char*> envp;
  for (char** e = environ; *e; ++e) {
    if (std::string_view(*e).starts_with("PLUMBER_WORKER=")) continue;
    envp.push_back(*e);
  }
  envp.push_back(const_cast<char*>(variable.c_str()));
  envp.push_back(nullptr);

  SpawnActions spawn;
  posix_spawn_file_actions_addopen(&spawn.actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&spawn.actions, output_fd, 1);
  posix_spawn_file_actions_adddup2(&spawn.actions, output_fd, 2);
  // dup2 of an fd onto itself clears its FD_CLOEXEC (glibc >= 2.29): only
  // these fds reach the worker; every other fd of ours is close-on-exec.
  for (int fd : {fds.segment, fds.requests, fds.results, fds.parent, fds.arena})
    posix_spawn_file_actions_adddup2(&spawn.actions, fd, fd);

  return on_launcher_thread([&]() -> pid_t {
    pid_t pid = 0;
    const int error =
        ::posix_spawn(&pid, "/proc/self/exe", &spawn.actions, nullptr, argv.data(), envp.data());
    if (error != 0) {
      errno = error;
      throw_errno("posix_spawn /proc/self/exe (worker)");
    }
    return pid;
  });
}

}  // namespace plumber::detail
