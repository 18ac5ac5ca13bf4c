#pragma once
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "plumber/error.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/message.hpp"
#include "plumber/processor.hpp"
#include "plumber/registry.hpp"
#include "plumber/worker_pool.hpp"
#include "runtime/packet.hpp"

namespace plumber::detail {

/// How one attempt of a step ended.
struct StepOutcome {
  errc code{};           ///< 0 when it succeeded
  std::string failure;   ///< what went wrong, when it failed
  bool expired = false;  ///< it gave up because the batch's deadline passed
  bool final = false;    ///< not to be retried (a remote dead letter: it killed its workers)
  /// Messages of a successful batch that failed alone (an `exec` program's
  /// `{"error": ...}` entries): (id, error) each, reported as error records.
  std::vector<std::pair<std::uint64_t, std::string>> message_errors{};
  /// Messages of a successful batch that were not run because their deadline
  /// passed first (a remote batch that waited at the broker), reported as expired.
  std::vector<std::uint64_t> expired_ids{};
  /// The worker process running the batch died (a pool restarts it).
  bool worker_died = false;
  /// The worker process that ran the batch, and when (CLOCK_MONOTONIC ns), for traces.
  int worker_pid = 0;
  std::uint64_t worker_started_ns = 0, worker_finished_ns = 0;
  /// From handing the batch to a worker to the worker finishing it (ns), 0
  /// when not known: a direct call counts it as the node's busy time, without
  /// reading the clock again.
  std::uint64_t handed_to_finished_ns = 0;
  bool ok() const noexcept { return failure.empty(); }
  /// As if new, keeping the storage: `*this = StepOutcome{}` zero-fills a
  /// temporary (rep stos) and frees the vectors, a cost on every batch.
  void reset() noexcept {
    code = {};
    failure.clear();
    expired = final = worker_died = false;
    message_errors.clear();
    expired_ids.clear();
    worker_pid = 0;
    worker_started_ns = worker_finished_ns = handed_to_finished_ns = 0;
  }
};

/// The limits of one attempt.
struct AttemptLimits {
  /// timeout_ms: counted from the moment the runner starts the step on the
  /// batch (for worker processes, when a worker takes it), never from when it
  /// was queued.
  std::optional<std::chrono::milliseconds> timeout;
  /// The latest deadline of the batch's messages: past it nobody waits for the result.
  Clock::time_point deadline = Clock::time_point::max();
};

/// A batch a runner started without a coroutine (StepRunner::start_now): a
/// worker process may have answered it already.
class StartedBatch {
 public:
  virtual ~StartedBatch() = default;
  /// The outcome and results are final.
  virtual bool done() const = 0;
  /// Waits until done(); throws when cancelled (stop(false)).
  virtual asio::awaitable<void> wait() = 0;
  std::vector<Message> batch, results;
  StepOutcome outcome;
};

/// One way of running a node's step. The node (TransformProcessor) hands it
/// batches; the retry/timeout/deadline policy around it (Attempts) is the same
/// whatever runs the step. Implementations: inline on the strand, an
/// awaitable on the strand, a thread pool, worker processes.
class StepRunner {
 public:
  virtual ~StepRunner() = default;
  /// A synchronous runner's step: the node calls it itself, on the strand,
  /// with no coroutine frame per message (its fast path). Null for the others.
  virtual Transform* inline_step() noexcept { return nullptr; }
  /// Whether run() would likely complete the next batch without suspending
  /// (a worker process answering within its spin), and whether that is worth
  /// more than overlapping it with the next batches that wait in the node's
  /// input: the node then runs it in its own coroutine rather than spawn one.
  virtual bool answers_at_once() const { return false; }
  /// One attempt at `batch` (its messages are taken) started from a plain
  /// function (no limits but `timeout`); null when this runner cannot (it
  /// needs a coroutine).
  virtual std::unique_ptr<StartedBatch> start_now(
      std::vector<Message>& /*batch*/, std::optional<std::chrono::milliseconds> /*timeout*/) {
    return nullptr;
  }
  /// A batch of start_now() whose outcome and results were taken: the runner
  /// may keep its storage for the next one.
  virtual void recycle(std::unique_ptr<StartedBatch> /*started*/) {}
  /// Runs one attempt. A failure of the step is an outcome, not an exception;
  /// throws only when cancelled (stop(false)).
  virtual asio::awaitable<StepOutcome> run(std::vector<Message>& batch,
                                           std::vector<Message>& results,
                                           const AttemptLimits& limits) = 0;

  /// Start, first phase: spawn what takes long (worker processes).
  virtual void launch() {}
  /// Start, second phase: wait for launch(), run on_start.
  virtual void on_start() = 0;
  /// Spawns the runner's own coroutines (worker supervisors) with `spawn`.
  virtual void serve(const std::function<void(asio::awaitable<void>)>& /*spawn*/) {}
  /// The node drained: no more batches.
  virtual void close() {}
  virtual std::optional<WorkerPoolStats> worker_stats() const { return std::nullopt; }
  virtual std::optional<RemoteStats> remote_stats() const { return std::nullopt; }
};

/// What the in-process runners (inline, awaitable, thread pool) share: they
/// own the node's step.
class InProcessRunner : public StepRunner {
 public:
  explicit InProcessRunner(std::unique_ptr<Transform> step) : step_(std::move(step)) {}
  void on_start() override { step_->on_start(); }

 protected:
  static StepOutcome failed(const std::exception& e) {
    return {errc::step_failed, e.what(), false};
  }
  std::unique_ptr<Transform> step_;
};

/// What a runner needs to know about its node.
struct RunnerContext {
  const NodeSpec& node;
  const Strand& strand;
  std::size_t priorities = 1;
  std::chrono::milliseconds worker_start_timeout{10'000};
  std::string graph_name;  ///< names a remote node's streams
  /// Messages waiting in the node's input (thread-safe): auto-scaled pools
  /// grow while it stays above zero.
  std::function<std::uint64_t()> queued{};
  /// The coroutine runs an external program (Capabilities::runs_programs).
  bool runs_programs = false;
};

/// The runner for a node: worker processes (`procs`), a thread pool
/// (`threads`), an awaitable step, or inline.
std::unique_ptr<StepRunner> make_step_runner(const RunnerContext& context,
                                             std::unique_ptr<Transform> step);

/// "timed out after N ms"
std::string timeout_text(std::chrono::milliseconds limit);

}  // namespace plumber::detail
