// An `exec` node's requests and results: batches wait in the host in priority
// order, go to an idle copy as one JSON line on its stdin, and come back as
// one line on its stdout. The copies themselves: exec_pool.cpp.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "exec/exec_pool_parts.hpp"
#include "json_parse.hpp"
#include "json_write.hpp"
#include "log.hpp"
#include "workers/protocol.hpp"

namespace plumber::detail {

using asio::use_awaitable;

namespace {

constexpr std::size_t kStderrTail = 2048;    // kept for error messages
constexpr std::size_t kMaxLine = 256 << 20;  // a result line longer than this is an error

std::string shortened(std::string_view text) {
  constexpr std::size_t kShown = 200;
  if (text.size() <= kShown) return std::string(text);
  return std::string(text.substr(0, kShown)) + "...";
}

/// `{"error": "..."}` and nothing else: a failed value.
const std::string* error_entry(const json& entry) {
  if (!entry.is_object() || entry.size() != 1) return nullptr;
  auto it = entry.find("error");
  if (it == entry.end() || !it->is_string()) return nullptr;
  return &it->get_ref<const std::string&>();
}

}  // namespace

// --- the copy's output -----------------------------------------------------------------

void ExecPool::read_now(Copy& c) {
  char buffer[16384];
  for (auto* d : {&c.output, &c.errors}) {
    while (*d) {
      const ssize_t n = ::read((*d)->native_handle(), buffer, sizeof buffer);
      if (n <= 0) break;
      if (d == &c.output) {
        take_stdout(c, std::string_view(buffer, static_cast<std::size_t>(n)));
      } else {
        take_stderr(c, std::string_view(buffer, static_cast<std::size_t>(n)));
      }
    }
  }
}

void ExecPool::take_stdout(Copy& c, std::string_view bytes) {
  c.stdout_buffer.append(bytes);
  std::size_t begin = 0;
  for (;;) {
    const auto end = c.stdout_buffer.find('\n', begin);
    if (end == std::string::npos) break;
    std::string_view line(c.stdout_buffer.data() + begin, end - begin);
    begin = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    if (!c.kill_reason.empty()) break;  // condemned: nothing it says counts any more
    handle_line(c, line);
  }
  c.stdout_buffer.erase(0, begin);
  if (c.stdout_buffer.size() > kMaxLine) {
    c.stdout_buffer.clear();
    protocol_error(c, "wrote a line longer than 256 MiB on stdout");
  }
}

// Each line of its stderr is a line of the host's log, with the node and the
// copy's pid: at level info, or the host's level when that is higher (a
// program's log is always shown).
void ExecPool::take_stderr(Copy& c, std::string_view bytes) {
  c.stderr_tail.append(bytes);
  if (c.stderr_tail.size() > kStderrTail) {
    c.stderr_tail.erase(0, c.stderr_tail.size() - kStderrTail);
  }
  c.stderr_line.append(bytes);
  std::size_t begin = 0;
  const auto level = std::max(spdlog::level::info, spdlog::default_logger_raw()->level());
  for (;;) {
    const auto end = c.stderr_line.find('\n', begin);
    if (end == std::string::npos) break;
    std::string_view line(c.stderr_line.data() + begin, end - begin);
    begin = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    log(level, {.node = node_.id, .worker_pid = c.pid}, line);
  }
  c.stderr_line.erase(0, begin);
  if (c.stderr_line.size() > 65536) {  // a very long line without end: log it in pieces
    log(level, {.node = node_.id, .worker_pid = c.pid}, c.stderr_line);
    c.stderr_line.clear();
  }
}

void ExecPool::protocol_error(Copy& c, std::string why) {
  if (!c.kill_reason.empty()) return;
  c.kill_reason = std::move(why);
  if (c.exit) ::kill(c.pid, SIGKILL);  // its supervisor restarts it and fails its batch
}

void ExecPool::handle_line(Copy& c, std::string_view line) {
  json message;
  try {
    message = parse_json(line);
  } catch (const std::exception& e) {
    protocol_error(c, "wrote a line that is not JSON on stdout (" + std::string(e.what()) +
                          "): " + shortened(line) + " (print logs to stderr)");
    return;
  }
  if (!message.is_object()) {
    protocol_error(c, "wrote a line that is not a JSON object on stdout: " + shortened(line));
    return;
  }
  if (c.state == State::starting) {
    if (auto ready = message.find("ready"); ready != message.end() && *ready == true) {
      c.state = State::ready;
      c.ready_seen.store(true, std::memory_order_relaxed);
      dispatch();
      return;
    }
    if (auto error = message.find("error"); error != message.end()) {
      c.start_error = error->is_string() ? error->get<std::string>() : error->dump();
      return;
    }
    protocol_error(c, "wrote " + shortened(line) +
                          " before it was ready (expected {\"ready\": true} or {\"error\": ...})");
    return;
  }
  auto id = message.find("id");
  auto sent = id == message.end() || !id->is_number_unsigned()
                  ? c.requests.end()
                  : std::find(c.requests.begin(), c.requests.end(), id->get<std::uint64_t>());
  if (sent == c.requests.end()) {
    protocol_error(c, "answered " + shortened(line) + ", which is no request it was sent");
    return;
  }
  auto found = running_.find(*sent);
  c.requests.erase(sent);
  batches_done_.add();
  if (found == running_.end()) {  // abandoned (timed out, cancelled): the copy is free again
    dispatch();
    return;
  }
  Pending& p = *found->second;
  const std::uint64_t now = monotonic_ns();
  const std::uint64_t started = std::max(p.sent_ns, c.last_answer_ns);
  c.last_answer_ns = now;
  worker_ns_.add(now - started);
  p.outcome->worker_pid = c.pid;
  p.outcome->worker_started_ns = started;
  p.outcome->worker_finished_ns = now;
  tasks_done_.add(p.batch->size());
  c.tasks.add(p.batch->size());
  auto results = message.find("results");
  if (auto error = message.find("error"); error != message.end() && results == message.end()) {
    p.outcome->failure = error->is_string() ? error->get<std::string>() : error->dump();
  } else if (results == message.end() || !results->is_array()) {
    p.outcome->failure = describe(c) + " answered without \"results\": " + shortened(line);
  } else if (results->size() != p.batch->size()) {
    p.outcome->failure = describe(c) + " answered " + std::to_string(results->size()) +
                         " results for " + std::to_string(p.batch->size()) + " values";
  } else {
    for (std::size_t i = 0; i < results->size(); ++i) {
      Message& in = (*p.batch)[i];
      json& entry = (*results)[i];
      if (const std::string* error = error_entry(entry)) {
        p.outcome->message_errors.emplace_back(in.id, *error);
        continue;
      }
      Message out;
      out.id = in.id;
      out.value = std::move(entry);
      out.blobs = in.blobs;  // the program sees the value only; blobs pass the step unchanged
      p.results->push_back(std::move(out));
    }
  }
  if (!p.outcome->ok() && p.outcome->code == errc{}) p.outcome->code = errc::step_failed;
  complete(p);
  dispatch();
}

// --- requests --------------------------------------------------------------------------

asio::awaitable<void> ExecPool::process(std::vector<Message>& batch, std::vector<Message>& results,
                                        StepOutcome& outcome,
                                        std::optional<std::chrono::milliseconds> timeout) {
  if (cancelled_) throw boost::system::system_error(asio::error::operation_aborted);
  const bool any = std::any_of(copies_.begin(), copies_.end(), [](const auto& c) {
    return c->active && (c->state == State::ready || c->state == State::starting);
  });
  if (!any) {
    outcome.failure = "no copy of node \"" + node_.id + "\" is running: " + last_error_;
    outcome.code = errc::step_failed;
    co_return;
  }
  Pending pending(strand_);
  pending.request_id = ++next_request_;
  for (const Message& m : batch)
    pending.priority = std::max(pending.priority, m.priority);
  pending.batch = &batch;
  pending.results = &results;
  pending.outcome = &outcome;
  pending.timeout = timeout;
  pending.queued_ns = monotonic_ns();
  asio::experimental::channel<void(error_code)> signal(strand_, 1);
  pending.signal = &signal;
  struct Forget {
    ExecPool* pool;
    Pending* pending;
    ~Forget() { pool->forget(*pending); }
  } forget_guard{this, &pending};
  in_flight_.add(batch.size());
  if (batch.size() > max_batch_.load(std::memory_order_relaxed)) {
    max_batch_.store(batch.size(), std::memory_order_relaxed);
  }
  // After every batch of its lane or a higher one.
  auto at = std::find_if(waiting_.begin(), waiting_.end(), [&](const Pending* queued) {
    return queued->priority < pending.priority;
  });
  waiting_.insert(at, &pending);
  dispatch();
  const std::tuple<error_code> waited =
      co_await signal.async_receive(asio::as_tuple(use_awaitable));
  if (pending.aborted || !pending.done || std::get<0>(waited)) {
    throw boost::system::system_error(asio::error::operation_aborted);
  }
}

void ExecPool::dispatch() {
  // Idle copies first, then one more request into the pipe of busy ones.
  for (std::size_t load = 0; load < depth_; ++load) {
    for (auto& copy : copies_) {
      if (waiting_.empty()) return;
      Copy& c = *copy;
      if (!c.active || c.state != State::ready || !c.input || c.requests.size() != load ||
          *c.writing) {
        continue;
      }
      Pending& p = *waiting_.front();
      waiting_.pop_front();
      send(c, p);
    }
  }
}

void ExecPool::send(Copy& c, Pending& p) {
  auto line = std::make_shared<std::string>();
  *line += "{\"id\":" + std::to_string(p.request_id) + ",\"values\":[";
  for (std::size_t i = 0; i < p.batch->size(); ++i) {
    if (i) *line += ',';
    append_json_line(*line, (*p.batch)[i].value);
    line->pop_back();  // its '\n'
  }
  *line += "]}\n";
  p.copy = &c;
  p.sent_ns = monotonic_ns();
  queue_ns_.add(p.sent_ns - p.queued_ns);
  c.requests.push_back(p.request_id);
  running_[p.request_id] = &p;
  // Most requests fit in the pipe: written now. The rest is written as the
  // copy reads; the buffer lives as long as the write (a copy that dies makes
  // it fail with EPIPE, which its supervisor reports).
  std::size_t written = 0;
  while (written < line->size()) {
    const ssize_t n =
        ::write(c.input->native_handle(), line->data() + written, line->size() - written);
    if (n <= 0) break;
    written += static_cast<std::size_t>(n);
  }
  if (written < line->size()) {
    *c.writing = true;
    asio::async_write(
        *c.input, asio::buffer(line->data() + written, line->size() - written),
        [this, line, writing = c.writing, alive = alive_](error_code ec, std::size_t) {
          *writing = false;
          if (!ec && *alive) dispatch();  // else the copy (or the pool) is gone
        });
  }
  if (p.timeout) {
    p.timer.expires_after(*p.timeout);
    p.timer.async_wait([this, copy = &c, id = p.request_id, limit = *p.timeout](error_code ec) {
      if (ec) return;
      auto it = running_.find(id);
      if (it == running_.end()) return;
      Pending& late = *it->second;
      late.outcome->failure =
          "timed out after " + std::to_string(limit.count()) + " ms in " + describe(*copy);
      late.outcome->code = errc::timed_out;
      complete(late);
      // The copy is still busy with it: replaced, so that the next batch
      // does not wait behind a result nobody wants.
      if (std::find(copy->requests.begin(), copy->requests.end(), id) != copy->requests.end()) {
        copy->kill_reason = "was killed: its request ran longer than timeout_ms (" +
                            std::to_string(limit.count()) + " ms)";
        ::kill(copy->pid, SIGKILL);
      }
    });
  }
}

void ExecPool::complete(Pending& p) {
  p.done = true;
  p.timer.cancel();
  running_.erase(p.request_id);
  auto it = std::find(waiting_.begin(), waiting_.end(), &p);
  if (it != waiting_.end()) waiting_.erase(it);
  in_flight_.sub(p.batch->size());
  p.signal->try_send(error_code{});
}

void ExecPool::forget(Pending& p) noexcept {
  if (!p.done) in_flight_.sub(p.batch->size());
  p.done = true;
  running_.erase(p.request_id);
  auto it = std::find(waiting_.begin(), waiting_.end(), &p);
  if (it != waiting_.end()) waiting_.erase(it);
}

void ExecPool::fail_waiting(const std::string& why) {
  while (!waiting_.empty()) {
    Pending& p = *waiting_.front();
    waiting_.pop_front();
    p.outcome->failure = why;
    p.outcome->code = errc::step_failed;
    complete(p);
  }
}

// --- stats -----------------------------------------------------------------------------

WorkerPoolStats ExecPool::stats() const {
  WorkerPoolStats s;
  s.program = true;
  s.procs = size_.get();
  s.tasks_done = tasks_done_.get();
  s.batches_done = batches_done_.get();
  s.in_flight = in_flight_.get();
  s.max_batch = max_batch_.load(std::memory_order_relaxed);
  s.restarts = restarts_.get();
  s.deaths = deaths_.get();
  s.queue_ns = queue_ns_.get();
  s.worker_ns = worker_ns_.get();
  if (scaler_) scaler_->fill(s);
  for (const auto& c : copies_) {
    if (!c->active_seen.load(std::memory_order_relaxed)) continue;
    WorkerStats one;
    one.index = c->index;
    one.pid = c->pid_seen.load(std::memory_order_relaxed);
    one.ready = c->ready_seen.load(std::memory_order_relaxed);
    one.tasks = c->tasks.get();
    one.restarts = c->restarts.get();
    s.workers.push_back(one);
  }
  return s;
}

}  // namespace plumber::detail
