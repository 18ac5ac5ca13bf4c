// An `exec` node's program copies: starting them, waiting until they are
// ready, supervising (restarts), auto-scaling and ending them. Requests and
// results: exec_requests.cpp.
#include "exec/exec_pool.hpp"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "exec/exec_pool_parts.hpp"
#include "log.hpp"
#include "workers/child_process.hpp"

namespace plumber::detail {

using asio::use_awaitable;

namespace {

/// After close(), a copy that has not exited on the end of its stdin is killed.
constexpr auto kExitGrace = std::chrono::seconds(5);

ProgramSpec program_of(const json& params) {
  ProgramSpec p;
  for (const auto& part : params.at("command"))
    p.command.push_back(part.get<std::string>());
  if (auto env = params.find("env"); env != params.end()) {
    for (const auto& [key, value] : env->items())
      p.env[key] = value.get<std::string>();
  }
  p.cwd = params.value("cwd", std::string());
  return p;
}

}  // namespace

ExecPool::ExecPool(const NodeSpec& node, const Strand& strand,
                   std::chrono::milliseconds start_timeout, std::function<std::uint64_t()> queued,
                   std::size_t priorities)
    : node_(node),
      strand_(strand),
      program_(program_of(node.params)),
      start_timeout_(start_timeout),
      queued_(std::move(queued)) {
  const std::size_t most =
      node_.autoscale ? node_.autoscale->max : std::max<std::size_t>(node_.procs, 1);
  for (std::size_t i = 0; i < most; ++i)
    copies_.push_back(std::make_unique<Copy>(i, strand_));
  if (node_.autoscale) scaler_.emplace(node_.procs, *node_.autoscale, Clock::now());
  if (priorities > 1 || node_.timeout) depth_ = 1;
  ignore_sigpipe_once();
}

ExecPool::~ExecPool() {
  *alive_ = false;
  for (auto& c : copies_)
    kill_and_reap(*c);
}

// --- starting ------------------------------------------------------------------------

void ExecPool::start(Copy& c) {
  ProgramProcess p = start_program(program_);
  c.pid = p.pid;
  c.pid_seen.store(p.pid, std::memory_order_relaxed);
  c.ready_seen.store(false, std::memory_order_relaxed);
  c.input.emplace(strand_, p.input.release());
  c.output.emplace(strand_, p.output.release());
  c.errors.emplace(strand_, p.errors.release());
  c.exit.emplace(strand_, p.pidfd.release());
  c.state = State::starting;
  c.start_deadline = Clock::now() + start_timeout_;
  c.start_error.clear();
  c.kill_reason.clear();
  c.killed_at_end = false;
  c.stdout_buffer.clear();
  c.stderr_line.clear();
  c.stderr_tail.clear();
  c.requests.clear();
  c.writing = std::make_shared<bool>(false);
}

void ExecPool::launch() {
  try {
    for (std::size_t i = 0; i < std::max<std::size_t>(node_.procs, 1); ++i) {
      copies_[i]->active = true;
      copies_[i]->active_seen.store(true, std::memory_order_relaxed);
      size_.add();
      start(*copies_[i]);
    }
  } catch (const std::exception& e) {
    for (auto& c : copies_)
      kill_and_reap(*c);
    throw std::runtime_error(e.what());
  }
}

void ExecPool::wait_ready() {
  try {
    for (auto& c : copies_) {
      if (c->active) wait_ready_blocking(*c);
    }
  } catch (...) {
    for (auto& c : copies_)
      kill_and_reap(*c);
    throw;
  }
}

// Before the pipeline runs, on the caller's thread: poll its stdout (for the
// ready line), its stderr (logged, and kept for the error) and its pidfd.
void ExecPool::wait_ready_blocking(Copy& c) {
  for (;;) {
    read_now(c);
    if (c.state == State::ready) return;
    std::string why;
    if (!c.start_error.empty()) {
      // It said why and should exit: wait a little for what it prints.
      pollfd exit_fd{c.exit->native_handle(), POLLIN, 0};
      ::poll(&exit_fd, 1, 1000);
      read_now(c);
      why = "its program reported: " + c.start_error;
    } else if (Clock::now() >= c.start_deadline) {
      why = "was not ready within " + std::to_string(start_timeout_.count()) +
            " ms (it must write {\"ready\": true} on stdout)";
    } else {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(c.start_deadline - Clock::now());
      pollfd fds[3] = {{c.output->native_handle(), POLLIN, 0},
                       {c.errors->native_handle(), POLLIN, 0},
                       {c.exit->native_handle(), POLLIN, 0}};
      ::poll(fds, 3, static_cast<int>(std::max<long long>(left.count(), 1)));
      if (!(fds[2].revents & POLLIN)) continue;
      read_now(c);
      if (c.state == State::ready || !c.start_error.empty()) continue;
      const pid_t pid = c.pid;
      why = reap(c);
      if (!c.kill_reason.empty()) why = c.kill_reason + " and " + why;
      throw std::runtime_error(with_stderr(
          c, "copy " + std::to_string(c.index) + " (pid " + std::to_string(pid) + ") of " +
                 program_.command.front() + " " + why + " before it was ready"));
    }
    throw std::runtime_error(with_stderr(c, describe(c) + " could not start: " + why));
  }
}

// --- ending ----------------------------------------------------------------------------

std::string ExecPool::reap(Copy& c) {
  const siginfo_t info = wait_for_exit(c.exit->native_handle());
  read_now(c);
  if (!c.stderr_line.empty()) take_stderr(c, "\n");
  c.exit.reset();
  c.input.reset();
  c.output.reset();
  c.errors.reset();
  c.ready_seen.store(false, std::memory_order_relaxed);
  return exit_text(info);
}

void ExecPool::kill_and_reap(Copy& c) noexcept {
  if (c.exit) {
    ::kill(c.pid, SIGKILL);
    (void)wait_for_exit(c.exit->native_handle());
    c.exit.reset();
  }
  c.input.reset();
  c.output.reset();
  c.errors.reset();
  c.state = State::stopped;
  c.ready_seen.store(false, std::memory_order_relaxed);
}

void ExecPool::close() {
  closing_ = true;
  if (scale_timer_) scale_timer_->cancel();
  for (auto& c : copies_) {
    c->backoff.cancel();
    if (!c->exit) continue;
    if (c->state == State::ready) {
      c->input.reset();  // end of its stdin: it exits
    } else {
      c->killed_at_end = true;
      ::kill(c->pid, SIGKILL);
    }
  }
}

// --- supervising -----------------------------------------------------------------------

void ExecPool::run(const Spawn& spawn) {
  spawn_ = spawn;
  for (auto& c : copies_) {
    if (!c->active) continue;
    c->supervised = true;
    spawn(supervise(*c));
  }
  if (scaler_) {
    scale_timer_.emplace(strand_);
    spawn(autoscale());
  }
}

asio::awaitable<void> ExecPool::supervise(Copy& c) {
  using namespace asio::experimental::awaitable_operators;
  try {
    for (;;) {
      if (c.state == State::broken) {
        if (closing_ || !c.active) break;
        c.backoff.expires_after(kRestartBackoff);
        co_await c.backoff.async_wait(asio::as_tuple(use_awaitable));
        if (!closing_ && c.active) restart(c);
      } else if (!c.exit) {
        break;
      } else {
        co_await (read_stdout(c) || read_stderr(c) || wait_exit(c) || watch_start(c));
        const bool was_ready = c.state == State::ready;
        const pid_t pid = c.pid;
        const std::string why = reap(c);
        c.pid = pid;
        after_death(c, why, was_ready);
      }
    }
  } catch (...) {
    // Cancelled (stop(false)) or a bug: the copy must not outlive us, and a
    // batch still waiting would wait for ever.
    cancelled_ = true;
    std::vector<Pending*> held(waiting_.begin(), waiting_.end());
    for (auto& [id, p] : running_)
      held.push_back(p);
    for (Pending* p : held) {
      p->aborted = true;
      complete(*p);
    }
    kill_and_reap(c);
    c.supervised = false;
    throw;
  }
  kill_and_reap(c);
  c.supervised = false;
}

asio::awaitable<void> ExecPool::read_stdout(Copy& c) {
  char buffer[16384];
  for (;;) {
    auto [ec, n] =
        co_await c.output->async_read_some(asio::buffer(buffer), asio::as_tuple(use_awaitable));
    if (ec) break;
    take_stdout(c, std::string_view(buffer, n));
  }
  // End of its stdout: it is ending, wait_exit reports it.
  co_await throw_if_cancelled();
  asio::steady_timer never(strand_, Clock::time_point::max());
  co_await never.async_wait(use_awaitable);
}

asio::awaitable<void> ExecPool::read_stderr(Copy& c) {
  char buffer[4096];
  for (;;) {
    auto [ec, n] =
        co_await c.errors->async_read_some(asio::buffer(buffer), asio::as_tuple(use_awaitable));
    if (ec) break;
    take_stderr(c, std::string_view(buffer, n));
  }
  co_await throw_if_cancelled();
  asio::steady_timer never(strand_, Clock::time_point::max());
  co_await never.async_wait(use_awaitable);
}

asio::awaitable<void> ExecPool::wait_exit(Copy& c) {
  co_await c.exit->async_wait(Descriptor::wait_read, use_awaitable);
}

// Kills a copy that is not ready in time, or that does not exit after the end
// of its stdin (close(), or retired by the scaler).
asio::awaitable<void> ExecPool::watch_start(Copy& c) {
  asio::steady_timer timer(strand_);
  if (c.state == State::starting) {
    timer.expires_at(c.start_deadline);
    co_await timer.async_wait(use_awaitable);
    if (c.state == State::starting) {
      c.kill_reason = "was not ready within " + std::to_string(start_timeout_.count()) + " ms";
      ::kill(c.pid, SIGKILL);
    }
  }
  for (;;) {
    if (closing_ || !c.active) {
      timer.expires_after(kExitGrace);
      co_await timer.async_wait(use_awaitable);
      c.kill_reason = "did not exit at the end of its input";
      ::kill(c.pid, SIGKILL);
    }
    // Woken (cancelled) by close() or shrink() through the pool's timer? No:
    // poll the flags at a modest pace, this costs one timer per copy.
    timer.expires_after(std::chrono::milliseconds(100));
    co_await timer.async_wait(use_awaitable);
  }
}

void ExecPool::after_death(Copy& c, const std::string& why, bool was_ready) {
  const bool expected = (closing_ || !c.active) && (why == "exited with code 0" || c.killed_at_end);
  c.killed_at_end = false;
  std::string text = describe(c) + " of node \"" + node_.id + "\" " +
                     (c.kill_reason.empty() ? why : c.kill_reason + " (" + why + ")");
  if (!c.start_error.empty()) text += ": its program reported: " + c.start_error;
  text = with_stderr(c, std::move(text));
  c.kill_reason.clear();
  c.state = State::stopped;
  if (!expected) {
    deaths_.add();
    log(closing_ ? spdlog::level::info : spdlog::level::warn,
        {.node = node_.id, .worker_pid = c.pid}, "{}", text);
  }
  // The batch it was running dies with it: that one fails (the processor
  // retries it up to `retries`). Those behind it in its pipe were never
  // started: back to the front of the host's queue, in order, for any copy.
  if (!c.requests.empty()) {
    const std::uint64_t running = c.requests.front();
    for (auto id = c.requests.rbegin(); id != c.requests.rend(); ++id) {
      auto it = running_.find(*id);
      if (it == running_.end() || *id == running) continue;
      Pending& p = *it->second;
      running_.erase(it);
      p.timer.cancel();
      p.copy = nullptr;
      waiting_.push_front(&p);
    }
    c.requests.clear();
    if (auto it = running_.find(running); it != running_.end()) {
      Pending& p = *it->second;
      p.outcome->failure = text;
      p.outcome->code = errc::step_failed;
      complete(p);
    }
  }
  if (closing_ || !c.active) {
    dispatch();  // another copy may take what waits
    return;
  }
  if (!was_ready) {
    c.state = State::broken;
    last_error_ = text;
  } else {
    restart(c);
  }
  // Nobody left to run what waits: it fails now rather than hang.
  const bool any = std::any_of(copies_.begin(), copies_.end(), [](const auto& other) {
    return other->active && (other->state == State::ready || other->state == State::starting);
  });
  if (!any) fail_waiting("no copy of node \"" + node_.id + "\" is running: " + last_error_);
}

void ExecPool::restart(Copy& c) {
  try {
    start(c);
    c.restarts.add();
    restarts_.add();
    log(spdlog::level::info, {.node = node_.id, .worker_pid = c.pid},
        "program copy restarted ({} restarts in this pool)", restarts_.get());
  } catch (const std::exception& e) {
    c.state = State::broken;
    last_error_ = e.what();
    log(spdlog::level::err, {.node = node_.id}, "program copy could not restart: {}", e.what());
  }
}

// --- auto-scaling ----------------------------------------------------------------------

PoolLoad ExecPool::load() const {
  PoolLoad l;
  for (const auto& c : copies_) {
    if (!c->active) continue;
    ++l.size;
    if (c->state == State::ready) ++l.ready;
    if (!c->requests.empty()) ++l.busy;
  }
  l.waiting = waiting_.size() + (queued_ ? queued_() : 0);
  return l;
}

asio::awaitable<void> ExecPool::autoscale() {
  while (!closing_) {
    scale_timer_->expires_after(scaler_->tick());
    co_await scale_timer_->async_wait(asio::as_tuple(use_awaitable));
    co_await throw_if_cancelled();
    if (closing_) break;
    switch (scaler_->decide(load(), Clock::now())) {
      case Autoscaler::Action::grow:
        grow();
        break;
      case Autoscaler::Action::shrink:
        shrink();
        break;
      case Autoscaler::Action::none:
        break;
    }
  }
}

void ExecPool::grow() {
  for (auto& c : copies_) {
    // A free slot: never active, or retired and gone.
    if (c->active || c->supervised || c->exit) continue;
    const std::size_t before = size_.get();
    try {
      c->active = true;
      c->active_seen.store(true, std::memory_order_relaxed);
      start(*c);
    } catch (const std::exception& e) {
      c->active = false;
      c->active_seen.store(false, std::memory_order_relaxed);
      c->state = State::stopped;
      log(spdlog::level::err, {.node = node_.id}, "could not add a program copy: {}", e.what());
      return;
    }
    size_.add();
    scaler_->resized(before, before + 1, Clock::now());
    log(spdlog::level::info, {.node = node_.id, .worker_pid = c->pid},
        "scaled up from {} to {} copies (backlogged, all busy)", before, before + 1);
    c->supervised = true;
    spawn_(supervise(*c));
    return;
  }
}

void ExecPool::shrink() {
  const std::size_t before = size_.get();
  std::size_t size = before;
  for (auto it = copies_.rbegin(); it != copies_.rend() && size > scaler_->min(); ++it) {
    Copy& c = **it;
    if (!c.active || !c.requests.empty()) continue;
    c.active = false;
    c.active_seen.store(false, std::memory_order_relaxed);
    c.input.reset();  // end of its stdin: it exits, its supervisor ends
    if (c.state != State::ready && c.exit) {
      c.killed_at_end = true;
      ::kill(c.pid, SIGKILL);
    }
    c.backoff.cancel();
    size_.sub();
    --size;
  }
  if (size == before) return;
  scaler_->resized(before, size, Clock::now());
  log(spdlog::level::info, {.node = node_.id}, "scaled down from {} to {} copies (idle)", before,
      size);
}

std::string ExecPool::describe(const Copy& c) const {
  return "copy " + std::to_string(c.index) + " (pid " + std::to_string(c.pid) + ") of " +
         program_.command.front();
}

std::string ExecPool::with_stderr(const Copy& c, std::string text) const {
  return append_stderr_tail(std::move(text), c.stderr_tail);
}

}  // namespace plumber::detail
