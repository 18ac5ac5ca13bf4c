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
#include "workers/protocol.hpp"
#include "workers/worker_launch.hpp"

namespace plumber::detail {

using asio::use_awaitable;
using Descriptor = asio::posix::stream_descriptor;

namespace {

constexpr std::size_t kRingCapacity = 1 << 20;
constexpr std::size_t kOutputTail = 2048;
constexpr auto kRestartBackoff = std::chrono::seconds(1);

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  return std::strtoull(text, nullptr, 10);
}

std::string exit_text(const siginfo_t& info) {
  if (info.si_code == CLD_EXITED) return "exited with code " + std::to_string(info.si_status);
  const int sig = info.si_status;
  const char* abbrev = sigabbrev_np(sig);
  return "was killed by signal " + std::to_string(sig) +
         (abbrev ? " (SIG" + std::string(abbrev) + ")" : std::string());
}

int make_eventfd() {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) throw_errno("eventfd");
  return fd;
}

std::atomic<std::uint64_t> g_segment_sequence{0};

/// Reaps the process of `pidfd`, waiting for it to end. Asio made the pidfd
/// non-blocking, and waitid on a non-blocking pidfd fails with EAGAIN while
/// the process runs: make it blocking first.
siginfo_t wait_for_exit(int pidfd) {
  const int flags = ::fcntl(pidfd, F_GETFL);
  if (flags >= 0 && (flags & O_NONBLOCK)) ::fcntl(pidfd, F_SETFL, flags & ~O_NONBLOCK);
  siginfo_t info{};
  while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &info, WEXITED) != 0 &&
         errno == EINTR) {
  }
  return info;
}

/// Throws operation_aborted when the calling coroutine was cancelled: a
/// cancellation that arrives during an operation that ignores it (post) or
/// that ends with an error code (as_tuple) is delivered once, then only this
/// state remembers it.
asio::awaitable<void> throw_if_cancelled() {
  const asio::cancellation_state state = co_await asio::this_coro::cancellation_state;
  if (state.cancelled() != asio::cancellation_type::none) {
    throw boost::system::system_error(asio::error::operation_aborted);
  }
}

}  // namespace

/// One batch in flight: lives in the frame of the process() call that waits for it.
struct WorkerPool::Pending {
  explicit Pending(const Strand& strand) : timer(strand) {}
  std::uint64_t request_id = 0;
  std::uint8_t priority = 0;
  std::vector<std::uint8_t> record;  // the encoded request
  std::vector<Message>* batch = nullptr;
  std::vector<Message>* results = nullptr;
  std::string* failure = nullptr;
  errc* code = nullptr;
  std::optional<std::chrono::milliseconds> timeout;
  asio::steady_timer timer;  // timeout, armed when a worker is handed the batch
  /// Where complete() signals the waiting process() call.
  asio::experimental::channel<void(error_code)>* signal = nullptr;
  Worker* worker = nullptr;
  std::uint64_t sent_ns = 0;
  bool sent = false;  // in the worker's ring (else in its backlog)
  bool done = false;
  bool aborted = false;  // the pool was cancelled
};

struct WorkerPool::Worker {
  Worker(std::size_t i, const Strand& strand) : index(i), backoff(strand) {}
  std::size_t index;
  pid_t pid = 0;
  Mapping mapping;
  WorkerSegment segment;
  UniqueFd requests_efd;
  std::optional<Descriptor> results;  // the results eventfd
  std::optional<Descriptor> exit;     // a pidfd: readable when the process ends
  std::optional<Descriptor> output;   // its stdout and stderr
  State state = State::stopped;
  Clock::time_point start_deadline;
  std::string start_error;
  std::string output_tail;
  std::unordered_map<std::uint64_t, Pending*> in_flight;  // sent or in the backlog
  std::deque<Pending*> backlog;  // waiting for room in the ring, or for the worker to be ready
  std::uint64_t last_sent_ns = 0;
  asio::steady_timer backoff;
  // Read by stats() from any thread.
  // Stuck-step watchdog (kill_stuck_workers), strand only.
  std::uint64_t watched_request = 0;  // running since watched_since
  Clock::time_point watched_since;
  std::uint64_t last_finished = 0;  // the last request it answered
  std::string kill_reason;          // set when the watchdog killed it
  std::atomic<int> pid_seen{0};
  std::atomic<bool> ready_seen{false};
  Counter tasks, restarts;
};

WorkerPool::WorkerPool(const NodeSpec& node, const Strand& strand,
                       std::chrono::milliseconds start_timeout, std::size_t priorities)
    : node_(node),
      strand_(strand),
      start_timeout_(start_timeout),
      depth_(priorities > 1 || node.timeout ? 1 : std::numeric_limits<std::size_t>::max()),
      parent_spin_ns_(env_number("PLUMBER_PARENT_SPIN_US", 50) * 1000),
      worker_spin_us_(static_cast<std::uint32_t>(env_number("PLUMBER_WORKER_SPIN_US", 50))) {
  for (std::size_t i = 0; i < node_.procs; ++i)
    workers_.push_back(std::make_unique<Worker>(i, strand_));
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
  Mapping mapping = Mapping::create(name, WorkerSegment::bytes_for(kRingCapacity));
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
    for (auto& w : workers_)
      spawn(*w);
  } catch (...) {
    for (auto& w : workers_)
      kill_and_reap(*w);
    throw;
  }
}

void WorkerPool::wait_ready() {
  try {
    for (auto& w : workers_)
      wait_ready_blocking(*w);
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

void WorkerPool::read_output_now(Worker& w) {
  if (!w.output) return;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(w.output->native_handle(), buffer, sizeof buffer);
    if (n <= 0) return;
    append_output(w, buffer, static_cast<std::size_t>(n));
  }
}

void WorkerPool::append_output(Worker& w, const char* data, std::size_t size) {
  // Forwarded as is: a worker's prints are the user's diagnostics.
  std::size_t written = 0;
  while (written < size) {
    const ssize_t n = ::write(STDERR_FILENO, data + written, size - written);
    if (n <= 0) break;
    written += static_cast<std::size_t>(n);
  }
  w.output_tail.append(data, size);
  if (w.output_tail.size() > kOutputTail) {
    w.output_tail.erase(0, w.output_tail.size() - kOutputTail);
  }
}

std::string WorkerPool::describe(const Worker& w) const {
  return "worker " + std::to_string(w.index) + " (pid " + std::to_string(w.pid) + ")";
}

std::string WorkerPool::with_output(const Worker& w, std::string text) const {
  std::string tail = w.output_tail;
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r' || tail.back() == ' '))
    tail.pop_back();
  if (!tail.empty()) text += "; its stderr: " + tail;
  return text;
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

void WorkerPool::close() {
  closing_ = true;
  std::vector<std::uint8_t> record;
  Encoder e(record);
  e.u8(static_cast<std::uint8_t>(RecordType::exit));
  for (auto& w : workers_) {
    w->backoff.cancel();
    if (!w->exit) continue;
    if (w->state == State::ready && push_record(w->segment.requests, record)) {
      kick(*w);
    } else {
      ::kill(w->pid, SIGKILL);  // starting, or wedged: nothing of ours is in it
    }
  }
}

// --- supervising -----------------------------------------------------------------------

void WorkerPool::run(const Spawn& spawn) {
  for (auto& w : workers_)
    spawn(supervise(*w));
  if (auto limit = node_.kill_after ? node_.kill_after : node_.timeout) {
    watchdog_.emplace(strand_);
    spawn(kill_stuck_workers(*limit));
  }
}

asio::awaitable<void> WorkerPool::supervise(Worker& w) {
  using namespace asio::experimental::awaitable_operators;
  try {
    while (!closing_) {
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
    throw;
  }
  kill_and_reap(w);
}

void WorkerPool::after_death(Worker& w, const std::string& why, bool was_ready,
                             std::uint64_t current_request) {
  const bool expected = closing_ && why == "exited with code 0";
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
    complete(w, *lost);
  }
  if (closing_) {
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

// --- requests --------------------------------------------------------------------------

asio::awaitable<void> WorkerPool::process(std::vector<Message>& batch,
                                          std::vector<Message>& results, StepOutcome& outcome,
                                          std::optional<std::chrono::milliseconds> timeout) {
  if (cancelled_) throw boost::system::system_error(asio::error::operation_aborted);
  std::string& failure = outcome.failure;
  Pending pending(strand_);
  pending.request_id = ++next_request_;
  for (const Message& m : batch)
    pending.priority = std::max(pending.priority, m.priority);
  pending.batch = &batch;
  pending.results = &results;
  pending.failure = &failure;
  pending.code = &outcome.code;
  pending.timeout = timeout;
  try {
    encode_request(pending);
  } catch (const std::bad_alloc&) {
    failure = "the shared-memory blob arena is full (PLUMBER_ARENA_MB)";
    co_return;
  }
  Worker* worker = choose_worker();
  if (!worker) {
    failure = "no worker of node \"" + node_.id + "\" is running: " + last_error_;
    co_return;
  }
  // A channel of one, not a timer to cancel: arming a timer costs a
  // timerfd_settime syscall per batch.
  asio::experimental::channel<void(error_code)> signal(strand_, 1);
  pending.signal = &signal;
  // Whatever ends this call (result, timeout, cancellation), the pool forgets it.
  struct Forget {
    WorkerPool* pool;
    Pending* pending;
    ~Forget() { pool->forget(*pending); }
  } forget_guard{this, &pending};
  in_flight_.add(batch.size());
  if (batch.size() > max_batch_.load(std::memory_order_relaxed)) {
    max_batch_.store(batch.size(), std::memory_order_relaxed);
  }
  submit(*worker, pending);
  const std::tuple<error_code> waited =
      co_await signal.async_receive(asio::as_tuple(use_awaitable));
  if (pending.aborted || !pending.done || std::get<0>(waited)) {
    throw boost::system::system_error(asio::error::operation_aborted);
  }
}

void WorkerPool::encode_request(Pending& p) {
  auto& arena = Arena::instance();
  p.record.clear();
  Encoder e(p.record);
  e.u8(static_cast<std::uint8_t>(RecordType::request));
  e.u64(p.request_id);
  e.u64(0);
  e.u32(static_cast<std::uint32_t>(p.batch->size()));
  for (Message& m : *p.batch) {
    e.u64(m.id);
    e.u8(m.priority);
    e.value(m.value);
    e.u32(static_cast<std::uint32_t>(m.blobs.size()));
    for (Blob& blob : m.blobs) {
      if (arena.contains(blob.data(), blob.size())) {
        shared_.add(blob.size());
      } else {
        // Into shared memory once; the message keeps the shared copy, so a
        // retry or a later worker node reuses it.
        SharedBytes bytes = allocate_shared_bytes(blob.size());
        if (blob.size()) std::memcpy(bytes.data(), blob.data(), blob.size());
        copied_.add(blob.size());
        blob = std::move(bytes).freeze();
      }
      e.u64(arena.offset_of(blob.data()));
      e.u64(blob.size());
    }
  }
}

WorkerPool::Worker* WorkerPool::choose_worker() {
  Worker* best = nullptr;
  for (auto& w : workers_) {
    if (w->state != State::ready && w->state != State::starting) continue;
    // Prefer ready workers, then the least loaded.
    if (!best || (w->state == State::ready && best->state != State::ready) ||
        (w->state == best->state && w->in_flight.size() < best->in_flight.size())) {
      best = w.get();
    }
  }
  return best;
}

void WorkerPool::submit(Worker& w, Pending& p) {
  p.worker = &w;
  w.in_flight[p.request_id] = &p;
  // After every batch of its lane or a higher one: the highest lane goes first
  // when the worker frees.
  auto at = std::find_if(w.backlog.begin(), w.backlog.end(),
                         [&](const Pending* queued) { return queued->priority < p.priority; });
  w.backlog.insert(at, &p);
  flush_backlog(w);
}

void WorkerPool::flush_backlog(Worker& w) {
  if (w.state != State::ready) return;
  bool pushed = false;
  while (!w.backlog.empty() && w.in_flight.size() - w.backlog.size() < depth_) {
    Pending& p = *w.backlog.front();
    const std::uint64_t now = monotonic_ns();
    std::memcpy(p.record.data() + 1 + sizeof(std::uint64_t), &now, sizeof now);
    if (!push_record(w.segment.requests, p.record)) break;
    p.sent = true;
    p.sent_ns = now;
    w.last_sent_ns = now;
    w.backlog.pop_front();
    pushed = true;
    if (p.timeout) arm_timeout(w, p);
  }
  if (pushed) kick(w);
}

void WorkerPool::arm_timeout(Worker& w, Pending& p) {
  // Finds the batch by id when it fires: it may be over by then.
  p.timer.expires_after(*p.timeout);
  p.timer.async_wait([this, w = &w, id = p.request_id, limit = *p.timeout](error_code ec) {
    if (ec) return;
    auto it = w->in_flight.find(id);
    if (it == w->in_flight.end()) return;
    *it->second->failure =
        "timed out after " + std::to_string(limit.count()) + " ms in " + describe(*w);
    *it->second->code = errc::timed_out;
    complete(*w, *it->second);
  });
}

void WorkerPool::kick(Worker& w) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (w.segment.header->worker_sleeping.load(std::memory_order_relaxed)) {
    (void)::eventfd_write(w.requests_efd.get(), 1);
  }
}

void WorkerPool::forget(Pending& p) noexcept {
  if (!p.worker) return;
  Worker& w = *p.worker;
  if (w.in_flight.erase(p.request_id) && !p.done) in_flight_.sub(p.batch->size());
  if (!p.sent) {
    auto it = std::find(w.backlog.begin(), w.backlog.end(), &p);
    if (it != w.backlog.end()) w.backlog.erase(it);
  }
}

void WorkerPool::complete(Worker& w, Pending& p) {
  p.done = true;
  p.timer.cancel();
  w.in_flight.erase(p.request_id);
  in_flight_.sub(p.batch->size());
  p.signal->try_send(error_code{});
  // A slot freed: the next batch (highest lane first) goes to the worker. Not
  // for a worker that died: its backlog waits for the restart.
  if (w.state == State::ready) flush_backlog(w);
}

void WorkerPool::fail_backlog(Worker& w, const std::string& why) {
  while (!w.backlog.empty()) {
    Pending& p = *w.backlog.front();
    w.backlog.pop_front();
    *p.failure = why;
    complete(w, p);
  }
}

bool WorkerPool::drain(Worker& w) {
  if (!w.segment.header) return false;
  bool any = false;
  for (;;) {
    const auto bytes = w.segment.results.peek();
    if (bytes.empty()) break;
    any = true;
    try {
      const IncomingRecord record(bytes);
      handle_record(w, record.bytes());
    } catch (const std::exception& e) {
      // A record we cannot read: the worker is not one of ours any more.
      w.start_error = std::string("protocol error: ") + e.what();
      ::kill(w.pid, SIGKILL);
    }
    w.segment.results.pop();
  }
  if (any) kick(w);  // it may be waiting for room in the results ring
  return any;
}

void WorkerPool::handle_record(Worker& w, std::span<const std::byte> bytes) {
  Decoder d(bytes);
  const auto type = static_cast<RecordType>(d.u8());
  switch (type) {
    case RecordType::ready:
      w.state = State::ready;
      w.ready_seen.store(true, std::memory_order_relaxed);
      return;
    case RecordType::start_failed:
      w.start_error = d.text();
      return;
    case RecordType::result:
    case RecordType::failure:
      break;
    default:
      throw std::runtime_error("unexpected record type " + std::to_string(static_cast<int>(type)));
  }
  const std::uint64_t request_id = d.u64();
  const std::uint64_t started = d.u64();
  const std::uint64_t finished = d.u64();
  w.last_finished = request_id;
  auto found = w.in_flight.find(request_id);
  Pending* p = found == w.in_flight.end() ? nullptr : found->second;
  if (p && p->sent_ns && started > p->sent_ns) queue_ns_.add(started - p->sent_ns);
  if (finished > started) worker_ns_.add(finished - started);
  batches_done_.add();
  if (type == RecordType::failure) {
    std::string text = d.text();
    if (!p) return;
    tasks_done_.add(p->batch->size());
    w.tasks.add(p->batch->size());
    *p->failure = std::move(text);
    complete(w, *p);
    return;
  }
  auto& arena = Arena::instance();
  copied_.add(d.u64());
  const std::uint32_t count = d.count(kMinMessageBytes);
  std::vector<Message> out(count);
  std::map<std::uint64_t, std::shared_ptr<ArenaAllocation>> handed_over;
  std::string problem;
  for (Message& m : out) {
    m.id = d.u64();
    m.priority = d.u8();
    m.value = d.value();
    const std::uint32_t blobs = d.u32();
    for (std::uint32_t i = 0; i < blobs; ++i) {
      const auto mode = static_cast<BlobMode>(d.u8());
      const std::uint64_t offset = d.u64();
      const std::uint64_t size = d.u64();
      const std::byte* at = arena.at(offset);
      if (mode == BlobMode::transferred) {
        const std::uint64_t allocation_offset = d.u64();
        const std::uint64_t allocation_size = d.u64();
        auto& owner = handed_over[allocation_offset];
        if (!owner) {
          owner = std::make_shared<ArenaAllocation>(arena.at(allocation_offset), allocation_size);
        }
        m.blobs.emplace_back(owner, std::span<const std::byte>(at, size));
        shared_.add(size);
        continue;
      }
      // Borrowed: a slice of a blob we lent it.
      bool found_blob = false;
      if (p) {
        for (const Message& in : *p->batch) {
          for (const Blob& blob : in.blobs) {
            if (at >= blob.data() && at + size <= blob.data() + blob.size()) {
              m.blobs.push_back(blob.slice(static_cast<std::size_t>(at - blob.data()), size));
              shared_.add(size);
              found_blob = true;
              break;
            }
          }
          if (found_blob) break;
        }
      }
      if (!found_blob) problem = "the step returned a shared blob it did not own";
    }
  }
  if (!p) return;  // abandoned (timed out): the transferred blobs are freed here
  tasks_done_.add(p->batch->size());
  w.tasks.add(p->batch->size());
  if (problem.empty()) {
    for (Message& m : out)
      p->results->push_back(std::move(m));
  } else {
    *p->failure = problem;
  }
  complete(w, *p);
}

// --- stats -----------------------------------------------------------------------------

WorkerPoolStats WorkerPool::stats() const {
  WorkerPoolStats s;
  s.procs = workers_.size();
  s.tasks_done = tasks_done_.get();
  s.batches_done = batches_done_.get();
  s.in_flight = in_flight_.get();
  s.max_batch = max_batch_.load(std::memory_order_relaxed);
  s.restarts = restarts_.get();
  s.deaths = deaths_.get();
  s.queue_ns = queue_ns_.get();
  s.worker_ns = worker_ns_.get();
  s.blob_bytes_copied = copied_.get();
  s.blob_bytes_shared = shared_.get();
  for (const auto& w : workers_) {
    WorkerStats one;
    one.index = w->index;
    one.pid = w->pid_seen.load(std::memory_order_relaxed);
    one.ready = w->ready_seen.load(std::memory_order_relaxed);
    one.tasks = w->tasks.get();
    one.restarts = w->restarts.get();
    s.workers.push_back(one);
  }
  return s;
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
