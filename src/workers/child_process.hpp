#pragma once
/// What the two pools of child processes share to supervise them: the worker
/// pool (workers/worker_pool.cpp) and the copies of an `exec` node's program
/// (exec/exec_pool.cpp). Each keeps its own processes; these say how one
/// ended, reap it, and pace its restarts.
#include <signal.h>

#include <chrono>
#include <string>

#include <boost/asio/awaitable.hpp>

namespace plumber::detail {

/// How long a supervisor waits before it tries again to restart a process
/// whose last restart failed.
inline constexpr auto kRestartBackoff = std::chrono::seconds(1);

/// How a child process ended: "exited with code N", or "was killed by signal
/// N (SIGNAME)".
std::string exit_text(const siginfo_t& info);

/// Reaps the process of `pidfd`, waiting for it to end. Asio made the pidfd
/// non-blocking, and waitid on a non-blocking pidfd fails with EAGAIN while
/// the process runs: make it blocking first.
siginfo_t wait_for_exit(int pidfd);

/// `text` followed by "; its stderr: " and the end of what the process
/// wrote (`tail`, without its trailing blanks), when there is any.
std::string append_stderr_tail(std::string text, std::string tail);

/// Throws operation_aborted when the calling coroutine was cancelled: a
/// cancellation that arrives during an operation that ignores it (post) or
/// that ends with an error code (as_tuple) is delivered once, then only this
/// state remembers it.
boost::asio::awaitable<void> throw_if_cancelled();

}  // namespace plumber::detail
