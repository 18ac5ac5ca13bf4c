// The worker pool's processes: starting, supervising (restarts, the stuck-step
// watchdog) and ending them. Requests: worker_requests.cpp; what comes back:
// worker_results.cpp.
#include "workers/worker_pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <new>
#include <stdexcept>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "log.hpp"
#include "workers/child_process.hpp"
#include "workers/protocol.hpp"
#include "workers/worker_launch.hpp"
#include "workers/worker_pool_parts.hpp"

namespace plumber::detail {

using asio::use_awaitable;

namespace {

constexpr std::size_t kRingCapacity = 1 << 20;

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  return std::strtoull(text, nullptr, 10);
}

int make_eventfd() {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) throw_errno("eventfd");
  return fd;
}

std::atomic<std::uint64_t> g_segment_sequence{0};

}  // namespace

WorkerPool::WorkerPool(const NodeSpec& node, const Strand& strand,
                       std::chrono::milliseconds start_timeout, std::size_t priorities,
                       std::function<std::uint64_t()> queued)
    : node_(node),
      strand_(strand),
      start_timeout_(start_timeout),
      // An auto-scaled pool keeps batches in the host (two per worker), where a
      // worker that joins can take them (steal).
      depth_(priorities > 1 || node.timeout ? 1
             : node.autoscale               ? 2
                                            : std::numeric_limits<std::size_t>::max()),
      parent_spin_ns_(env_number("PLUMBER_PARENT_SPIN_US", 50) * 1000),
      worker_spin_us_(static_cast<std::uint32_t>(env_number("PLUMBER_WORKER_SPIN_US", 50))) {
  queued_ = std::move(queued);
  const std::size_t most = node_.autoscale ? node_.autoscale->max : node_.procs;
  for (std::size_t i = 0; i < most; ++i)
    workers_.push_back(std::make_unique<Worker>(i, strand_));
  if (node_.autoscale) scaler_.emplace(node_.procs, *node_.autoscale, Clock::now());
}

WorkerPool::~WorkerPool() {
  for (auto& w : workers_)
    kill_and_reap(*w);
}

// --- starting ------------------------------------------------------------------------

void WorkerPool::spawn(Worker& w) {
  json config = json::object();
  config["node"] = node_.id;
  config["coroutine"] = node_.coroutine;
  config["params"] = node_.params;
  config["index"] = w.index;
  config["spin_us"] = worker_spin_us_;
  json plugins = json::array();
  for (const auto& path : loaded_plugin_paths())
    plugins.push_back(path);
  config["plugins"] = std::move(plugins);

  const std::string name = "/plumber-" + std::to_string(::getpid()) + "-" + node_.id.substr(0, 64) +
                           "-" + std::to_string(w.index) + "-" +
                           std::to_string(g_segment_sequence.fetch_add(1));
  // Populated: faulting in the rings' 512 pages one by one cost the first
  // 20,000 round trips (the first lap) 0.2 us each, 1-5 us a fault in a VM.
  Mapping mapping =
      Mapping::create(name, WorkerSegment::bytes_for(kRingCapacity), Mapping::Pages::populated);
  WorkerSegment segment = WorkerSegment::format(mapping, kRingCapacity, config.dump());
  UniqueFd requests(make_eventfd());
  UniqueFd results(make_eventfd());
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw_errno("pipe2 (worker output)");
  UniqueFd output_read(pipe_fds[0]);
  UniqueFd output_write(pipe_fds[1]);

  WorkerFds fds;
  fds.segment = mapping.fd();
  fds.requests = requests.get();
  fds.results = results.get();
  fds.parent = lifeline_fd();
  fds.arena = Arena::instance().fd();
  const pid_t pid = spawn_worker_process(fds, output_write.get());
  output_write.reset();
  // syscall(): glibc 2.36 declares pidfd_open without extern "C".
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    throw_errno("pidfd_open");
  }
  ::fcntl(pidfd, F_SETFD, FD_CLOEXEC);

  w.pid = pid;
  w.pid_seen.store(pid, std::memory_order_relaxed);
  w.ready_seen.store(false, std::memory_order_relaxed);
  w.mapping = std::move(mapping);
  w.segment = std::move(segment);
  w.requests_efd = std::move(requests);
  w.results.emplace(strand_, results.release());
  w.exit.emplace(strand_, pidfd);
  w.output.emplace(strand_, output_read.release());
  w.output->non_blocking(true);
  w.state = State::starting;
  w.start_deadline = Clock::now() + start_timeout_;
  w.start_error.clear();
  w.output_tail.clear();
}

void WorkerPool::launch() {
  remove_stale_segments();
  try {
    for (std::size_t i = 0; i < node_.procs; ++i) {
      workers_[i]->active = true;
      workers_[i]->active_seen.store(true, std::memory_order_relaxed);
      size_.add();
      spawn(*workers_[i]);
    }
  } catch (...) {
    for (auto& w : workers_)
      kill_and_reap(*w);
    throw;
  }
}

void WorkerPool::wait_ready() {
  try {
    for (auto& w : workers_) {
      if (w->active) wait_ready_blocking(*w);
    }
  } catch (...) {
    for (auto& w : workers_)
      kill_and_reap(*w);
    throw;
  }
}

void WorkerPool::wait_ready_blocking(Worker& w) {
  for (;;) {
    drain(w);
    if (w.state == State::ready) return;
    std::string why;
    if (!w.start_error.empty()) {
      // It reported why and exits: wait for that, to catch what it printed.
      pollfd exit_fd{w.exit->native_handle(), POLLIN, 0};
      ::poll(&exit_fd, 1, 1000);
      why = w.start_error;
    }
    const auto now = Clock::now();
    if (why.empty() && now >= w.start_deadline) {
      why = "was not ready within " + std::to_string(start_timeout_.count()) + " ms";
    }
    if (why.empty()) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(w.start_deadline - now).count();
      pollfd fds[3] = {{w.results->native_handle(), POLLIN, 0},
                       {w.exit->native_handle(), POLLIN, 0},
                       {w.output->native_handle(), POLLIN, 0}};
      ::poll(fds, 3, static_cast<int>(std::max<long long>(left, 1)));
      if (fds[0].revents & POLLIN) {
        eventfd_t value;
        (void)::eventfd_read(w.results->native_handle(), &value);
      }
      read_output_now(w);
      if (!(fds[1].revents & POLLIN)) continue;
      drain(w);
      if (w.state == State::ready) continue;  // ready, then died: reported by the supervisor
      if (!w.start_error.empty()) continue;
      const pid_t pid = w.pid;
      why = reap(w);
      throw std::runtime_error(with_output(w, "worker " + std::to_string(w.index) + " (pid " +
                                                  std::to_string(pid) + ") " + why +
                                                  " before it was ready"));
    }
    const std::string text = describe(w) + " could not start: " + why;
    read_output_now(w);
    throw std::runtime_error(with_output(w, text));
  }
}

// --- ending ----------------------------------------------------------------------------

std::string WorkerPool::reap(Worker& w) {
  const siginfo_t info = wait_for_exit(w.exit->native_handle());
  read_output_now(w);
  w.exit.reset();
  w.output.reset();
  w.ready_seen.store(false, std::memory_order_relaxed);
  return exit_text(info);
}

void WorkerPool::kill_and_reap(Worker& w) noexcept {
  if (w.exit) {
    ::kill(w.pid, SIGKILL);
    (void)wait_for_exit(w.exit->native_handle());
    w.exit.reset();
  }
  w.output.reset();
  w.results.reset();
  w.requests_efd.reset();
  w.segment = {};
  w.mapping = {};
  w.state = State::stopped;
  w.ready_seen.store(false, std::memory_order_relaxed);
}

// --- supervising -----------------------------------------------------------------------

void WorkerPool::run(const Spawn& spawn) {
  spawn_ = spawn;
  for (auto& w : workers_) {
    if (!w->active) continue;
    w->supervised = true;
    spawn(supervise(*w));
  }
  if (scaler_) {
    scale_timer_.emplace(strand_);
    spawn(autoscale());
  }
  if (auto limit = node_.kill_after ? node_.kill_after : node_.timeout) {
    watchdog_.emplace(strand_);
    spawn(kill_stuck_workers(*limit));
  }
}

asio::awaitable<void> WorkerPool::supervise(Worker& w) {
  using namespace asio::experimental::awaitable_operators;
  try {
    while (!closing_ && w.active) {
      if (w.state == State::broken) {
        // The last restart failed: try again a little later.
        w.backoff.expires_after(kRestartBackoff);
        co_await w.backoff.async_wait(asio::as_tuple(use_awaitable));
        if (!closing_) restart(w);
      } else if (!w.exit) {
        co_return;
      } else {
        co_await (read_results(w) || wait_exit(w) || forward_output(w) || watch_start(w));
        const bool was_ready = w.state == State::ready;
        const pid_t pid = w.pid;
        drain(w);  // results written before it ended
        const std::uint64_t running =
            w.segment.header->current_request.load(std::memory_order_acquire);
        const std::string why = reap(w);
        w.pid = pid;
        after_death(w, why, was_ready, running);
      }
    }
  } catch (...) {
    // Cancelled (stop(false)) or a bug: the worker must not outlive us.
    // A batch handed to the pool after stop(false) began (its caller was not
    // cancelled yet) would wait for a worker that is gone: cancel it too.
    cancelled_ = true;
    std::vector<Pending*> held;
    for (auto& [id, p] : w.in_flight)
      held.push_back(p);
    for (Pending* p : held) {
      p->aborted = true;
      complete(w, *p);
    }
    w.backlog.clear();
    kill_and_reap(w);
    w.supervised = false;
    throw;
  }
  kill_and_reap(w);
  w.supervised = false;
}

void WorkerPool::after_death(Worker& w, const std::string& why, bool was_ready,
                             std::uint64_t current_request) {
  const bool expected = (closing_ || !w.active) && why == "exited with code 0";
  const bool stuck = !w.kill_reason.empty();  // killed by the watchdog, not dead by itself
  std::string text = describe(w) + " of node \"" + node_.id + "\" " +
                     (w.kill_reason.empty() ? why : w.kill_reason);
  w.kill_reason.clear();
  w.watched_request = 0;
  text = with_output(w, std::move(text));
  w.results.reset();
  w.requests_efd.reset();
  w.segment = {};
  w.mapping = {};
  w.state = State::stopped;
  if (!expected) {
    deaths_.add();
    detail::log(closing_ ? spdlog::level::info : spdlog::level::warn,
                {.node = node_.id, .worker_pid = w.pid}, "{}", text);
  }
  // The batch it was running is lost with it: that one fails (the processor
  // retries it up to `retries`). Requests still in its ring were never
  // started: they go back to the front of the backlog, in order, for the
  // restarted worker. (Results it wrote before dying were drained already.)
  const std::uint64_t running = current_request;
  std::vector<Pending*> unstarted;
  Pending* lost = nullptr;
  for (auto& [id, p] : w.in_flight) {
    if (!p->sent) continue;
    if (id == running) {
      lost = p;
    } else {
      unstarted.push_back(p);
    }
  }
  std::sort(unstarted.begin(), unstarted.end(),
            [](const Pending* a, const Pending* b) { return a->request_id > b->request_id; });
  for (Pending* p : unstarted) {
    p->sent = false;
    w.backlog.push_front(p);
  }
  if (lost) {
    *lost->failure = text;
    lost->outcome->worker_died = !stuck;
    complete(w, *lost);
  }
  if (closing_ || !w.active) {
    fail_backlog(w, text);
    return;
  }
  if (!was_ready) {
    w.state = State::broken;
    last_error_ = w.start_error.empty() ? text : describe(w) + " could not start: " + w.start_error;
    fail_backlog(w, "could not restart: " + last_error_);
    return;
  }
  restart(w);
}

void WorkerPool::restart(Worker& w) {
  try {
    spawn(w);
    w.restarts.add();
    restarts_.add();
    detail::log(spdlog::level::info, {.node = node_.id, .worker_pid = w.pid},
                "worker restarted ({} restarts in this pool)", restarts_.get());
  } catch (const std::exception& e) {
    w.state = State::broken;
    last_error_ = e.what();
    detail::log(spdlog::level::err, {.node = node_.id}, "worker could not restart: {}", e.what());
    fail_backlog(w, std::string("could not restart: ") + e.what());
  }
}

asio::awaitable<void> WorkerPool::read_results(Worker& w) {
  auto* header = w.segment.header;
  std::uint64_t active = monotonic_ns();
  unsigned polls = 0;
  for (;;) {
    co_await throw_if_cancelled();  // the worker ended, or stop(false)
    if (drain(w)) active = monotonic_ns();
    flush_backlog(w);
    if (monotonic_ns() - std::max(active, w.last_sent_ns) < parent_spin_ns_) {
      // Traffic is recent (a result is due soon, or the next request often
      // follows a result within microseconds): poll again after whatever else
      // is queued rather than sleep in epoll, where a wake-up costs several
      // microseconds here (tens when the core was idle). Bounded: after
      // parent_spin_ns_ without a request or a result, it sleeps.
      // Every few rounds, give the core away if the worker waits for it.
      if ((++polls & 15) == 0) ::sched_yield();
      co_await asio::post(strand_, use_awaitable);
    } else {
      header->parent_waiting.store(1, std::memory_order_seq_cst);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (w.segment.results.empty()) {
        co_await w.results->async_wait(Descriptor::wait_read, use_awaitable);
        eventfd_t value;
        (void)::eventfd_read(w.results->native_handle(), &value);
        active = monotonic_ns();
      }
      header->parent_waiting.store(0, std::memory_order_relaxed);
    }
  }
}

asio::awaitable<void> WorkerPool::wait_exit(Worker& w) {
  co_await w.exit->async_wait(Descriptor::wait_read, use_awaitable);
}

asio::awaitable<void> WorkerPool::forward_output(Worker& w) {
  std::vector<char> buffer(4096);
  for (;;) {
    std::tuple<error_code, std::size_t> got =
        co_await w.output->async_read_some(asio::buffer(buffer), asio::as_tuple(use_awaitable));
    if (std::get<0>(got)) break;
    append_output(w, buffer.data(), std::get<1>(got));
  }
  // End of its output: the process is ending; wait_exit reports it.
  co_await throw_if_cancelled();
  asio::steady_timer never(strand_, Clock::time_point::max());
  co_await never.async_wait(use_awaitable);
}

asio::awaitable<void> WorkerPool::watch_start(Worker& w) {
  asio::steady_timer timer(strand_);
  if (w.state == State::starting) {
    timer.expires_at(w.start_deadline);
    co_await timer.async_wait(use_awaitable);
    if (w.state == State::starting) {
      w.start_error = "not ready within " + std::to_string(start_timeout_.count()) + " ms";
      ::kill(w.pid, SIGKILL);
    }
  }
  timer.expires_at(Clock::time_point::max());
  co_await timer.async_wait(use_awaitable);
}

// --- stuck steps ------------------------------------------------------------------------

// A step that never returns (an endless loop, a SIGSTOP) would hold its worker
// and every batch behind it for ever: past `limit` inside one request, the
// worker is killed; its supervisor restarts it, the batch fails (and is
// retried up to `retries`), and the batches queued behind it go to the new one.
asio::awaitable<void> WorkerPool::kill_stuck_workers(std::chrono::milliseconds limit) {
  const auto tick = std::clamp<std::chrono::milliseconds>(limit / 4, std::chrono::milliseconds(1),
                                                          std::chrono::milliseconds(100));
  // Until every worker is gone: close() asks them to exit, which a stuck one never reads.
  auto any_alive = [this] {
    return std::any_of(workers_.begin(), workers_.end(),
                       [](auto& w) { return w->exit.has_value(); });
  };
  while (!closing_ || any_alive()) {
    watchdog_->expires_after(tick);
    co_await watchdog_->async_wait(asio::as_tuple(use_awaitable));
    co_await throw_if_cancelled();
    const auto now = Clock::now();
    for (auto& worker : workers_) {
      Worker& w = *worker;
      if (w.state != State::ready || !w.exit || !w.segment.header || !w.kill_reason.empty()) {
        continue;
      }
      drain(w);  // a result already written counts
      const std::uint64_t running =
          w.segment.header->current_request.load(std::memory_order_acquire);
      if (running == 0 || running == w.last_finished) {
        w.watched_request = 0;
      } else if (running != w.watched_request) {
        w.watched_request = running;
        w.watched_since = now;
      } else if (now - w.watched_since >= limit) {
        w.kill_reason = std::string("was killed: its step ran longer than ") +
                        (node_.kill_after ? "kill_after_ms" : "timeout_ms") + " (" +
                        std::to_string(limit.count()) + " ms)";
        ::kill(w.pid, SIGKILL);
      }
    }
  }
}

}  // namespace plumber::detail
