#pragma once
/// Starting worker processes: this program re-executed with PLUMBER_WORKER set.
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace plumber::detail {

/// The fds a worker inherits (same numbers in parent and worker).
struct WorkerFds {
  int segment = -1;   ///< its segment: config and rings
  int requests = -1;  ///< eventfd: the parent wrote a request
  int results = -1;   ///< eventfd: the worker wrote a result
  int parent = -1;    ///< read end of the lifeline pipe: EOF when the parent is gone
  int arena = -1;     ///< the blob arena
};

/// In a worker: the fds from PLUMBER_WORKER, which it then removes from the
/// environment (children of the worker are not workers). nullopt otherwise.
std::optional<WorkerFds> worker_fds_from_environment();

/// Re-executes this program (/proc/self/exe, argv from /proc/self/cmdline) as a
/// worker: stdin /dev/null, stdout and stderr to `output_fd`, the fds of
/// `fds` inherited. posix_spawn (vfork + exec) is safe in a threaded process.
/// Throws std::system_error.
pid_t spawn_worker_process(const WorkerFds& fds, int output_fd);

/// Read end of this process's lifeline pipe (its write end is never written
/// nor closed, and never inherited: workers see EOF when this process dies).
int lifeline_fd();

/// The plugins this process loaded (load_plugin), for workers to load too.
std::vector<std::string> loaded_plugin_paths();

}  // namespace plumber::detail
