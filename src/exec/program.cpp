#include "exec/program.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <system_error>

extern char** environ;

namespace plumber::detail {
namespace {

struct Pipe {
  UniqueFd read, write;
  Pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno("pipe2 (exec step)");
    read.reset(fds[0]);
    write.reset(fds[1]);
  }
};

struct Actions {
  posix_spawn_file_actions_t actions;
  Actions() { posix_spawn_file_actions_init(&actions); }
  ~Actions() { posix_spawn_file_actions_destroy(&actions); }
};

struct Attributes {
  posix_spawnattr_t attributes;
  Attributes() { posix_spawnattr_init(&attributes); }
  ~Attributes() { posix_spawnattr_destroy(&attributes); }
};

void set_non_blocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

}  // namespace

void ignore_sigpipe_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
      ::signal(SIGPIPE, SIG_IGN);
    }
  });
}

ProgramProcess start_program(const ProgramSpec& spec) {
  if (spec.command.empty()) throw std::invalid_argument("exec: empty command");
  Pipe in, out, err;

  std::vector<char*> argv;
  for (const auto& a : spec.command)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  // The host's environment, with the step's variables over it. Never the
  // variable that would make a Plumber binary run as a worker.
  std::vector<std::string> extra;
  for (const auto& [key, value] : spec.env)
    extra.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (char** e = environ; *e; ++e) {
    const std::string_view entry(*e);
    const auto name = entry.substr(0, entry.find('='));
    if (name == "PLUMBER_WORKER" || spec.env.contains(std::string(name))) continue;
    envp.push_back(*e);
  }
  for (auto& e : extra)
    envp.push_back(e.data());
  envp.push_back(nullptr);

  Actions actions;
  posix_spawn_file_actions_adddup2(&actions.actions, in.read.get(), 0);
  posix_spawn_file_actions_adddup2(&actions.actions, out.write.get(), 1);
  posix_spawn_file_actions_adddup2(&actions.actions, err.write.get(), 2);
  if (!spec.cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions.actions, spec.cwd.c_str());
  // The child gets default signal dispositions (the host may ignore SIGPIPE)
  // and an empty signal mask.
  Attributes attributes;
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attributes.attributes, &all);
  posix_spawnattr_setsigmask(&attributes.attributes, &none);
  posix_spawnattr_setflags(&attributes.attributes, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  pid_t pid = 0;
  const int error = ::posix_spawnp(&pid, argv[0], &actions.actions, &attributes.attributes,
                                   argv.data(), envp.data());
  if (error != 0) {
    throw std::system_error(error, std::generic_category(),
                            "cannot start " + spec.command.front() +
                                (spec.cwd.empty() ? std::string() : " in " + spec.cwd));
  }
  ProgramProcess p;
  p.pid = pid;
  // syscall(): glibc 2.36 declares pidfd_open without extern "C".
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    const int saved = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    throw std::system_error(saved, std::generic_category(), "pidfd_open");
  }
  ::fcntl(pidfd, F_SETFD, FD_CLOEXEC);
  p.pidfd.reset(pidfd);
  p.input = std::move(in.write);
  p.output = std::move(out.read);
  p.errors = std::move(err.read);
  for (int fd : {p.input.get(), p.output.get(), p.errors.get()})
    set_non_blocking(fd);
  return p;
}

}  // namespace plumber::detail
