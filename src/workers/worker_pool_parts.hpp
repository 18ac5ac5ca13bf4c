#pragma once
/// What worker_pool.cpp (the processes), worker_requests.cpp (requests) and
/// worker_results.cpp (what comes back) share: one batch in flight, and one
/// worker process.
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/unordered/unordered_flat_map.hpp>

#include "workers/shm.hpp"
#include "workers/worker_pool.hpp"

namespace plumber::detail {

using Descriptor = asio::posix::stream_descriptor;

/// One batch in flight: lives in the frame of the process() call that waits for it.
struct WorkerPool::Pending {
  std::uint64_t request_id = 0;
  std::uint8_t priority = 0;
  std::vector<std::uint8_t> record;  // the encoded request
  std::vector<Message>* batch = nullptr;
  std::vector<Message>* results = nullptr;
  std::string* failure = nullptr;
  errc* code = nullptr;
  StepOutcome* outcome = nullptr;  // where the worker and its times go (traces)
  std::optional<std::chrono::milliseconds> timeout;
  /// timeout_ms, armed when a worker is handed the batch. Made then: a timer
  /// or a channel costs more to make than a batch answered inline takes.
  std::optional<asio::steady_timer> timer;
  /// Where complete() signals the waiting process() call, once it waits.
  asio::experimental::channel<void(error_code)>* signal = nullptr;
  Worker* worker = nullptr;
  std::uint64_t sent_ns = 0;
  bool sent = false;  // in the worker's ring (else in its backlog)
  bool done = false;
  bool aborted = false;  // the pool was cancelled
  /// As if new, keeping the record's storage (see StepOutcome::reset).
  void reset() noexcept {
    request_id = 0;
    priority = 0;
    record.clear();
    batch = results = nullptr;
    failure = nullptr;
    code = nullptr;
    outcome = nullptr;
    timeout.reset();
    timer.reset();
    signal = nullptr;
    worker = nullptr;
    sent_ns = 0;
    sent = done = aborted = false;
  }
};

/// A batch start_now() handed to a worker: it owns what the pool points to.
class WorkerPool::Started final : public StartedBatch {
 public:
  explicit Started(WorkerPool& pool) : pool_(pool) {}
  ~Started() override { pool_.forget(pending_); }
  bool done() const override { return !begun_ || pending_.done; }
  asio::awaitable<void> wait() override;

 private:
  friend class WorkerPool;
  WorkerPool& pool_;
  Pending pending_;
  bool begun_ = false;
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
  /// Counted in the pool's size; a worker the scaler retires is not (it gets
  /// no more batches and is asked to exit).
  bool active = false;
  bool supervised = false;  // a supervisor coroutine runs for it
  std::atomic<bool> active_seen{false};
  Clock::time_point start_deadline;
  std::string start_error;
  std::string output_tail;
  /// Sent or in the backlog. Flat: a node-based map allocates for each batch.
  boost::unordered_flat_map<std::uint64_t, Pending*> in_flight;
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

}  // namespace plumber::detail
