#pragma once
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <boost/asio/experimental/channel.hpp>

#include "registry/in_place_transform.hpp"
#include "runtime/batcher.hpp"
#include "runtime/processor.hpp"
#include "runtime/step_runner.hpp"
#include "runtime/zip_joiner.hpp"

namespace plumber::detail {

/// A transform or a sink: takes messages from its input port (merged, or
/// zipped by its ZipJoiner), skips expired ones and those its `when` rejects,
/// gathers batches (Batcher), runs them through its StepRunner under the
/// node's retry/timeout policy (Attempts) with up to `concurrency` batches at
/// once, and sends the results on.
class TransformProcessor final : public Processor {
 public:
  TransformProcessor(PipelineCore& core, const NodeSpec& spec, const CoroutineInfo& info,
                     const PredicateInfo* when);
  ~TransformProcessor() override;

  InputPort* input() noexcept override { return &input_; }
  void add_predecessor(std::uint16_t port, const std::string& name) override;
  bool may_fuse() const noexcept override { return fast_path(); }
  /// True when this node can run inline in its predecessors' coroutine (when
  /// they all run in one): a synchronous step on the strand, no batching.
  bool fusible() const noexcept { return fast_path() && spec_.batch_size == 1; }

  /// Whether a predecessor may hand this node messages by a direct call
  /// (try_take_now): a step in worker processes, one message a batch, several
  /// at once, no zip, retries, timeout or trace.
  bool takes_direct_calls() const noexcept { return direct_calls_; }
  /// Runs data `packet` now, in the caller's coroutine, when this node is idle
  /// (nothing queued, running or waiting to leave) and its worker answers
  /// within microseconds: no scheduler pass on the way in. False, `packet`
  /// untouched, otherwise (send it through the input). A batch the worker does
  /// not answer at once is awaited by a unit of its own.
  bool try_take_now(Packet& packet);

  void launch() override { runner_->launch(); }
  void on_start() override { runner_->on_start(); }
  asio::awaitable<void> run() override;
  ProcessorStats stats() const override;

  /// A fused predecessor hands over one packet, from its edge to input `port`
  /// (see Processor::fuse).
  void handle_inline(Packet&& packet, std::uint16_t port);
  /// Cancellation of a fused node: reports the zip parts it holds.
  void cancel_held_parts() override;

 private:
  bool fast_path() const noexcept { return inline_step_ != nullptr; }
  asio::awaitable<void> receive_loop();
  void pass_in_place(Packet& packet);
  /// With a zip, holds the part (take_zip_part); true when `packet` is then
  /// data to process. Checked on every message: inline, as accept_data.
  bool take_part(Packet& packet, Outbox& out) { return !zip_ || take_zip_part(packet, out); }
  bool take_zip_part(Packet& packet, Outbox& out);
  /// Defined in transform_checks.hpp, inline where it is used.
  inline bool accept_data(Packet& packet, Outbox& out);
  /// accept_data() for a message with a deadline, a `when`, or a request waiting.
  bool screen_data(Packet& packet, Outbox& out);
  void take_dropped(Packet& packet, Outbox& out);
  void release_zip_leftovers(Outbox& out);
  asio::awaitable<void> finish_input(Outbox& out);

  /// Runs what the batcher holds (the fast path in place; else in a unit).
  asio::awaitable<void> dispatch_batch();
  void compute_now(std::span<Message> batch, Outbox& out);
  asio::awaitable<void> compute(std::vector<Message>& batch, Outbox& out);
  asio::awaitable<void> run_unit(std::vector<Message> batch, bool release_slot);
  /// The unit of a batch try_take_now started that was not answered at once.
  asio::awaitable<void> finish_started(std::unique_ptr<StartedBatch> started);
  /// The outputs of a batch, or its errors, into `out`, once its attempts are over.
  void conclude(std::vector<Message>& batch, std::vector<Message>& results,
                const StepOutcome& outcome, Outbox& out);
  /// conclude() for a batch try_take_now started (its one attempt).
  void conclude_started(StartedBatch& started, Outbox& out);
  /// Counts the time since `started` as the node's busy time; returns it (ns).
  std::uint64_t count_busy(Clock::time_point started);
  void count_busy_ns(std::uint64_t ns);
  /// A unit's concurrency slot, given back when the unit ends (none: null).
  struct UnitSlot {
    explicit UnitSlot(TransformProcessor* holder) : node(holder) {}
    UnitSlot(const UnitSlot&) = delete;
    UnitSlot& operator=(const UnitSlot&) = delete;
    ~UnitSlot();
    TransformProcessor* node;
  };
  asio::awaitable<void> wait_units_idle();
  void collect_outputs(std::span<const Message> batch, std::vector<Message>& results, Outbox& out);
  void fail_batch(std::span<const Message> batch, const StepOutcome& outcome, Outbox& out);
  /// The messages of a successful batch that failed alone (StepOutcome::message_errors).
  void fail_messages(std::vector<Message>& batch, const StepOutcome& outcome, Outbox& out);
  void cancel_everything_held(Outbox& out);

  const PredicateInfo* when_;
  InputPort input_;
  std::unique_ptr<StepRunner> runner_;
  Transform* inline_step_ = nullptr;      // a synchronous runner's step, called directly
  InPlaceTransform* in_place_ = nullptr;  // set when a fused message may pass by reference
  std::vector<std::string> input_names_;  // predecessor id by port
  std::size_t ends_seen_ = 0;
  std::optional<ZipJoiner> zip_;
  Batcher batcher_;
  std::vector<Message> results_;       // the fast path's, reused
  std::vector<Message> direct_batch_;  // try_take_now's, reused
  /// Concurrency slots: a unit takes one by sending, gives it back by receiving.
  std::optional<asio::experimental::channel<void(error_code)>> slots_;
  std::size_t units_running_ = 0;  // batches past dispatch, not yet sent on
  bool direct_calls_ = false;      // see takes_direct_calls()
  bool timed_ = false;             // each step call is measured (timings, a timeout or a trace)
};

}  // namespace plumber::detail
