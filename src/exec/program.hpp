#pragma once
/// Starting one copy of an `exec` step's program: its stdin, stdout and stderr
/// are pipes to the host, nothing else is inherited.
#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "workers/shm.hpp"

namespace plumber::detail {

/// What runs: the command (PATH is searched for its first word), extra
/// environment variables over the host's, and the working directory.
struct ProgramSpec {
  std::vector<std::string> command;
  std::map<std::string, std::string> env;
  std::string cwd;  ///< empty: the host's
};

/// A started copy. The fds are non-blocking and close-on-exec.
struct ProgramProcess {
  pid_t pid = 0;
  UniqueFd pidfd;   ///< readable when it ends
  UniqueFd input;   ///< write end of its stdin
  UniqueFd output;  ///< read end of its stdout
  UniqueFd errors;  ///< read end of its stderr
};

/// Spawns `spec` (posix_spawnp: vfork + exec, safe in a threaded host). Throws
/// std::system_error naming the program when it cannot be started (not found,
/// not executable, bad cwd).
ProgramProcess start_program(const ProgramSpec& spec);

/// SIGPIPE would kill the host when a copy dies while the host writes to it:
/// ignored (writes fail with EPIPE instead) unless the host installed a handler.
void ignore_sigpipe_once();

}  // namespace plumber::detail
