// The worker pool's requests: batches wait for a worker in priority order, go
// to its ring, and end when their result or failure record comes back
// (worker_results.cpp reads those). The processes themselves: worker_pool.cpp.
#include <signal.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "workers/protocol.hpp"
#include "workers/worker_pool_parts.hpp"

namespace plumber::detail {

using asio::use_awaitable;

void WorkerPool::close() {
  closing_ = true;
  if (scale_timer_) scale_timer_->cancel();
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

// --- requests --------------------------------------------------------------------------

bool WorkerPool::begin(Pending& pending, std::vector<Message>& batch, std::vector<Message>& results,
                       StepOutcome& outcome, std::optional<std::chrono::milliseconds> timeout) {
  pending.request_id = ++next_request_;
  for (const Message& m : batch)
    pending.priority = std::max(pending.priority, m.priority);
  pending.batch = &batch;
  pending.results = &results;
  pending.failure = &outcome.failure;
  pending.code = &outcome.code;
  pending.outcome = &outcome;
  pending.timeout = timeout;
  pending.record.swap(spare_record_);
  try {
    encode_request(pending);
  } catch (const std::bad_alloc&) {
    outcome.failure = "the shared-memory blob arena is full (PLUMBER_ARENA_MB)";
    return false;
  }
  Worker* worker = choose_worker();
  if (!worker) {
    outcome.failure = "no worker of node \"" + node_.id + "\" is running: " + last_error_;
    return false;
  }
  in_flight_.add(batch.size());
  if (batch.size() > max_batch_.load(std::memory_order_relaxed)) {
    max_batch_.store(batch.size(), std::memory_order_relaxed);
  }
  submit(*worker, pending);
  if (pending.sent && should_wait_inline(*worker)) wait_inline(*worker, pending);
  return true;
}

asio::awaitable<void> WorkerPool::await_result(Pending& pending) {
  // A channel of one, not a timer to cancel: arming a timer costs a
  // timerfd_settime syscall per batch.
  asio::experimental::channel<void(error_code)> signal(strand_, 1);
  pending.signal = &signal;
  const std::tuple<error_code> waited =
      co_await signal.async_receive(asio::as_tuple(use_awaitable));
  pending.signal = nullptr;
  if (pending.aborted || !pending.done || std::get<0>(waited)) {
    throw boost::system::system_error(asio::error::operation_aborted);
  }
}

asio::awaitable<void> WorkerPool::process(std::vector<Message>& batch,
                                          std::vector<Message>& results, StepOutcome& outcome,
                                          std::optional<std::chrono::milliseconds> timeout) {
  if (cancelled_) throw boost::system::system_error(asio::error::operation_aborted);
  Pending pending;
  // Whatever ends this call (result, timeout, cancellation), the pool forgets it.
  struct Forget {
    WorkerPool* pool;
    Pending* pending;
    ~Forget() { pool->forget(*pending); }
  } forget_guard{this, &pending};
  if (!begin(pending, batch, results, outcome, timeout)) co_return;
  if (!pending.done) co_await await_result(pending);  // else answered while we spun
}

asio::awaitable<void> WorkerPool::Started::wait() {
  if (!done()) co_await pool_.await_result(pending_);
}

std::unique_ptr<StartedBatch> WorkerPool::start_now(
    std::vector<Message>& batch, std::optional<std::chrono::milliseconds> timeout) {
  std::unique_ptr<Started> started =
      spare_started_ ? std::move(spare_started_) : std::make_unique<Started>(*this);
  started->batch.swap(batch);
  if (cancelled_) {
    started->outcome.failure = "the pipeline is stopping";
    return started;
  }
  started->begun_ =
      begin(started->pending_, started->batch, started->results, started->outcome, timeout);
  return started;
}

void WorkerPool::recycle(std::unique_ptr<StartedBatch> done) {
  if (spare_started_ || !done) return;
  // Only start_now() makes the batches this pool's runner hands back.
  std::unique_ptr<Started> started(static_cast<Started*>(done.release()));
  forget(started->pending_);
  started->pending_.reset();
  started->begun_ = false;
  started->batch.clear();
  started->results.clear();
  started->outcome.reset();
  spare_started_ = std::move(started);
}

// Waiting inline holds the strand, so only when nothing else of this node
// could use it: the batch is the worker's only one, no message waits in the
// node's input (the next batch would be sent while this one runs), and the
// last batches came back quickly. Quickly means within a fifth of the spin
// (10 us by default): a round trip that short is mostly latency, which a
// scheduler pass would double. Longer ones (a slow step, batches of 64) gain
// more from overlapping the next batch's making with the worker's run, and
// their results come through the supervisor as before.
//
// Messages waiting in the node's input do not stop it when the worker's time
// is tiny (kTinyBusyNs): a batch sent the other way costs the parent more
// than that (a co_spawn, two channels, the supervisor's pass: ~5 us here), so
// overlapping the next batch cannot pay, with one worker or several. Without
// this, a backlog (a source faster than the step) made every batch take the
// slow way, and the backlog never drained (trivial tasks at batch_size 1:
// ~150 k/s, 800 k/s with it).
bool WorkerPool::waiting_inline_pays() const {
  const bool quick = parent_spin_ns_ > 0 && recent_busy_ns_ < parent_spin_ns_ / 5;
  const bool tiny = recent_busy_ns_ < kTinyBusyNs;
  return quick && (tiny || !queued_ || queued_() == 0);
}

bool WorkerPool::should_wait_inline(const Worker& w) const {
  return w.in_flight.size() == 1 && waiting_inline_pays();
}

bool WorkerPool::answers_at_once() const {
  if (!waiting_inline_pays()) return false;
  bool ready = false;
  for (const auto& w : workers_) {
    if (!w->in_flight.empty()) return false;
    ready = ready || (w->active && w->state == State::ready);
  }
  return ready;
}

void WorkerPool::wait_inline(Worker& w, Pending& p) {
  // While we spin, the worker need not signal its results (a syscall each):
  // the supervisor may be asleep on the eventfd, and is told again after.
  auto& parent_waiting = w.segment.header->parent_waiting;
  // Written only when set: a write would pull the line from the worker's core.
  const bool supervisor_sleeps = parent_waiting.load(std::memory_order_relaxed) != 0 &&
                                 parent_waiting.exchange(0, std::memory_order_relaxed) != 0;
  const std::uint64_t start = p.sent_ns;  // just now
  for (unsigned i = 1; !p.done; ++i) {
    if (drain(w)) continue;
    if ((i & 63) == 0 && monotonic_ns() - start > parent_spin_ns_) break;
    __builtin_ia32_pause();
  }
  if (!supervisor_sleeps) return;
  parent_waiting.store(1, std::memory_order_seq_cst);
  // A result written before the flag was back would not be signalled.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  drain(w);
}

void WorkerPool::encode_request(Pending& p) {
  auto& arena = Arena::instance();
  p.record.clear();
  Encoder e(p.record);
  e.u8(static_cast<std::uint8_t>(RecordType::request));
  e.varint(p.request_id);
  e.varint(p.batch->size());
  for (Message& m : *p.batch) {
    e.varint(m.id);
    e.u8(m.priority);
    e.value(m.value);
    e.varint(m.blobs.size());
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
    if (!w->active || (w->state != State::ready && w->state != State::starting)) continue;
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
  if (at == w.backlog.end()) {
    // Not insert(): at an empty deque's end it pushes in front, and a deque
    // allocates a block (and frees it on pop) each time it grows forwards.
    w.backlog.push_back(&p);
  } else {
    w.backlog.insert(at, &p);
  }
  flush_backlog(w);
}

void WorkerPool::flush_backlog(Worker& w) {
  if (w.state != State::ready) return;
  if (scaler_ && w.active && w.backlog.empty()) steal(w);
  just_sent_.clear();
  while (!w.backlog.empty() && w.in_flight.size() - w.backlog.size() < depth_) {
    Pending& p = *w.backlog.front();
    if (!push_record(w.segment.requests, p.record)) break;
    p.sent = true;
    w.backlog.pop_front();
    just_sent_.push_back(&p);
    if (p.timeout) arm_timeout(w, p);
  }
  if (just_sent_.empty()) return;
  kick(w);
  // The clock is read once the worker has the requests, off the round trip's
  // path (a read costs ~30 ns in a VM; the worker needs no send time). A
  // result's time in queue may come out a little short for it.
  const std::uint64_t now = monotonic_ns();
  w.last_sent_ns = now;
  for (Pending* p : just_sent_)
    p->sent_ns = now;
}

void WorkerPool::arm_timeout(Worker& w, Pending& p) {
  // Finds the batch by id when it fires: it may be over by then.
  p.timer.emplace(strand_, *p.timeout);
  p.timer->async_wait([this, w = &w, id = p.request_id, limit = *p.timeout](error_code ec) {
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
  if (p.record.capacity() > spare_record_.capacity()) spare_record_.swap(p.record);
  if (!p.worker) return;
  Worker& w = *p.worker;
  if (w.in_flight.erase(p.request_id) && !p.done) in_flight_.sub(p.batch->size());
  if (!p.sent) {
    auto it = std::find(w.backlog.begin(), w.backlog.end(), &p);
    if (it != w.backlog.end()) w.backlog.erase(it);
  }
}

void WorkerPool::note_busy(std::uint64_t ns) noexcept {
  // Smoothed over the last few batches (1/8 weight to the newest).
  recent_busy_ns_ = recent_busy_ns_ - recent_busy_ns_ / 8 + ns / 8;
}

void WorkerPool::complete(Worker& w, Pending& p, bool answered) {
  p.done = true;
  // Not answered (timed out, its worker died): it ran at least this long.
  if (!answered && p.sent_ns) note_busy(monotonic_ns() - p.sent_ns);
  if (p.timer) p.timer->cancel();
  w.in_flight.erase(p.request_id);
  in_flight_.sub(p.batch->size());
  if (p.signal) p.signal->try_send(error_code{});
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

}  // namespace plumber::detail
