// Supervising child processes: what worker_pool.cpp and exec_pool.cpp share.
#include "workers/child_process.hpp"

#include <fcntl.h>
#include <string.h>
#include <sys/wait.h>

#include <cerrno>

#include <boost/asio/this_coro.hpp>
#include <boost/system/system_error.hpp>

namespace plumber::detail {

namespace asio = boost::asio;

std::string exit_text(const siginfo_t& info) {
  if (info.si_code == CLD_EXITED) return "exited with code " + std::to_string(info.si_status);
  const int sig = info.si_status;
  const char* abbrev = sigabbrev_np(sig);
  return "was killed by signal " + std::to_string(sig) +
         (abbrev ? " (SIG" + std::string(abbrev) + ")" : std::string());
}

siginfo_t wait_for_exit(int pidfd) {
  const int flags = ::fcntl(pidfd, F_GETFL);
  if (flags >= 0 && (flags & O_NONBLOCK)) ::fcntl(pidfd, F_SETFL, flags & ~O_NONBLOCK);
  siginfo_t info{};
  while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &info, WEXITED) != 0 &&
         errno == EINTR) {
  }
  return info;
}

std::string append_stderr_tail(std::string text, std::string tail) {
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r' || tail.back() == ' '))
    tail.pop_back();
  if (!tail.empty()) text += "; its stderr: " + tail;
  return text;
}

asio::awaitable<void> throw_if_cancelled() {
  const asio::cancellation_state state = co_await asio::this_coro::cancellation_state;
  if (state.cancelled() != asio::cancellation_type::none) {
    throw boost::system::system_error(asio::error::operation_aborted);
  }
}

}  // namespace plumber::detail
