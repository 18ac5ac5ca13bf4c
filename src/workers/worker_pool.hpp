#pragma once
/// The parent side of `procs`: a node's pool of worker processes.
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include "plumber/graph_spec.hpp"
#include "plumber/worker_pool.hpp"
#include "runtime/packet.hpp"
#include "runtime/step_runner.hpp"
#include "workers/autoscaler.hpp"
#include "workers/shm.hpp"

namespace plumber::detail {

class Decoder;

/// `procs` worker processes running one node's step, fed through shared
/// memory. Everything but start() and stats() runs on the pipeline's strand.
///
/// Life: launch() spawns the workers and wait_ready() (both on the caller's
/// thread) waits until each ran on_start: the pipeline launches every pool
/// before it waits for any, so nodes start in parallel; run() spawns one supervisor coroutine per
/// worker on the strand (it reads results, forwards the worker's stderr, and restarts the worker
/// when it dies); process() sends a batch and awaits its results; close() asks
/// the workers to exit once the node has drained. stop(false) cancels the
/// supervisors, which kill their workers. The destructor kills and reaps any
/// worker still running: no zombies, and the segments are already unlinked.
class WorkerPool {
 public:
  using Spawn = std::function<void(asio::awaitable<void>)>;

  /// `queued` (thread-safe) tells an auto-scaled pool how many messages wait
  /// in the node's input.
  WorkerPool(const NodeSpec& node, const Strand& strand, std::chrono::milliseconds start_timeout,
             std::size_t priorities = 1, std::function<std::uint64_t()> queued = {});
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Spawns every worker (returns at once).
  void launch();
  /// Waits until every launched worker is ready. Throws std::runtime_error
  /// naming the worker, with its error or stderr, when one cannot start in time
  /// (and kills them all).
  void wait_ready();
  /// launch() and wait_ready().
  void start() {
    launch();
    wait_ready();
  }
  /// Spawns the supervisors (with `spawn`, so that stop cancels and awaits them).
  void run(const Spawn& spawn);
  /// Runs the step on `batch` in a worker. Outputs go to `results`; a step
  /// error, a worker death or a timeout sets `outcome`. Throws
  /// operation_aborted when cancelled. Blobs of `batch` not yet in shared memory
  /// are moved there (once). Batches wait for a worker in priority order (the
  /// highest lane of their messages); `timeout` counts from the moment a
  /// worker is handed the batch.
  asio::awaitable<void> process(std::vector<Message>& batch, std::vector<Message>& results,
                                StepOutcome& outcome,
                                std::optional<std::chrono::milliseconds> timeout);
  /// process() without a coroutine, for a node called directly by its
  /// predecessor: the batch comes back answered when the worker answered
  /// within the spin; else StartedBatch::wait() awaits the answer.
  /// Takes the messages of `batch`, which gets an empty vector (with capacity) back.
  std::unique_ptr<StartedBatch> start_now(std::vector<Message>& batch,
                                          std::optional<std::chrono::milliseconds> timeout);
  /// A batch of start_now() that is done with: its storage serves the next one.
  void recycle(std::unique_ptr<StartedBatch> started);
  /// Whether process() would likely answer the next batch without suspending
  /// (nothing in flight, the last batches came back within the spin, and the
  /// node's input is empty or the worker's batches are tiny).
  bool answers_at_once() const;
  /// No more batches: workers exit when idle.
  void close();
  /// Thread-safe.
  WorkerPoolStats stats() const;

 private:
  struct Pending;
  struct Worker;
  class Started;
  enum class State { stopped, starting, ready, broken };

  void spawn(Worker& w);
  void wait_ready_blocking(Worker& w);
  void kill_and_reap(Worker& w) noexcept;
  std::string reap(Worker& w);
  void read_output_now(Worker& w);
  void append_output(Worker& w, const char* data, std::size_t size);
  std::string describe(const Worker& w) const;
  std::string with_output(const Worker& w, std::string text) const;

  asio::awaitable<void> supervise(Worker& w);
  asio::awaitable<void> read_results(Worker& w);
  asio::awaitable<void> wait_exit(Worker& w);
  asio::awaitable<void> forward_output(Worker& w);
  asio::awaitable<void> watch_start(Worker& w);
  void after_death(Worker& w, const std::string& why, bool was_ready,
                   std::uint64_t current_request);
  void restart(Worker& w);

  /// Hands `p` to a worker (and waits inline when it should); false, the
  /// failure in `outcome`, when no worker can take it.
  bool begin(Pending& p, std::vector<Message>& batch, std::vector<Message>& results,
             StepOutcome& outcome, std::optional<std::chrono::milliseconds> timeout);
  asio::awaitable<void> await_result(Pending& p);
  /// The last batches came back quickly, and the node's input is empty or
  /// they took the worker under kTinyBusyNs (worker_requests.cpp).
  bool waiting_inline_pays() const;
  static constexpr std::uint64_t kTinyBusyNs = 2'000;
  bool should_wait_inline(const Worker& w) const;
  /// Spins on `w`'s results, up to parent_spin_ns_, until `p` is answered.
  void wait_inline(Worker& w, Pending& p);
  void encode_request(Pending& p);
  Worker* choose_worker();
  void submit(Worker& w, Pending& p);
  void flush_backlog(Worker& w);
  void arm_timeout(Worker& w, Pending& p);
  void forget(Pending& p) noexcept;
  bool drain(Worker& w);
  void handle_record(Worker& w, std::span<const std::byte> bytes);
  /// Appends a result record's `count` messages to `out`; `problem` says what
  /// was wrong with a blob. `p`: the batch, or null when it was abandoned.
  void decode_results(Decoder& d, std::uint32_t count, const Pending* p, std::vector<Message>& out,
                      std::string& problem);
  /// Ends a batch: its caller is told, the worker's next batch goes. The
  /// round trip is counted to `finished_ns` when the worker says when it
  /// finished (the same clock), else to now.
  /// `answered`: by a result or failure record (else timed out, aborted or lost).
  void complete(Worker& w, Pending& p, bool answered = false);
  void note_busy(std::uint64_t ns) noexcept;
  void fail_backlog(Worker& w, const std::string& why);
  void kick(Worker& w);
  asio::awaitable<void> kill_stuck_workers(std::chrono::milliseconds limit);
  // Auto-scaling (`"procs": {"min", "max"}`): worker_scaling.cpp.
  asio::awaitable<void> autoscale();
  PoolLoad load() const;
  void grow();
  void shrink();
  /// Takes for `w` (ready, nothing waiting for it) batches that wait for a
  /// busier worker, so that a worker the pool just added gets work at once.
  void steal(Worker& w);

  NodeSpec node_;
  Strand strand_;
  std::chrono::milliseconds start_timeout_;
  /// Batches handed to one worker at a time. Several keep a worker busy while
  /// the parent reads results; one makes priorities and timeout_ms exact (a
  /// batch waits in the parent, in priority order, until a worker is free).
  std::size_t depth_;
  std::uint64_t parent_spin_ns_;
  std::uint32_t worker_spin_us_;
  /// Every worker the pool may ever run (`max` of an auto-scaled pool); only
  /// the active ones run. The vector never changes after construction.
  std::vector<std::unique_ptr<Worker>> workers_;
  std::function<std::uint64_t()> queued_;
  std::optional<Autoscaler> scaler_;
  std::optional<asio::steady_timer> scale_timer_;
  Spawn spawn_;
  std::uint64_t next_request_ = 0;
  /// The buffer of a finished request's record, for the next one to encode
  /// into: a batch answered inline would otherwise pay an allocation for it.
  std::vector<std::uint8_t> spare_record_;
  /// The requests flush_backlog() just pushed, given their send time together.
  std::vector<Pending*> just_sent_;
  /// A finished start_now() batch, kept with its vectors' capacity: a batch
  /// answered inline would otherwise pay several allocations.
  std::unique_ptr<Started> spare_started_;
  /// How long the worker ran the last batches (smoothed): decides whether
  /// process() waits for the result inline. Not the round trip, which counts
  /// a sleeping worker's wake-up: after one stall, every batch went the slow
  /// way, waking a worker asleep each time (15 us here), and so kept the
  /// average up for hundreds of batches.
  std::uint64_t recent_busy_ns_ = 0;
  std::optional<asio::steady_timer> watchdog_;  // kill_stuck_workers ticks on it
  bool closing_ = false;
  bool cancelled_ = false;  // stop(false): the supervisors are gone
  std::string last_error_;  // why the last restart failed

  Counter tasks_done_, batches_done_, in_flight_, restarts_, deaths_, queue_ns_, worker_ns_,
      copied_, shared_, size_;
  std::atomic<std::uint64_t> max_batch_{0};
};

}  // namespace plumber::detail
