// Direct calls: an idle node called by its predecessor like a fused one
// (docs/architecture.md, "Direct calls"). The rest of the node:
// transform_processor.cpp.
#include <utility>

#include "runtime/pipeline_core.hpp"
#include "runtime/transform_checks.hpp"

namespace plumber::detail {

bool TransformProcessor::try_take_now(Packet& packet) {
  // Idle: nothing waits in the input, in a unit or to leave, so taking this
  // message now keeps the order in which the predecessor sent.
  if (packet.kind != PacketKind::data || !idle() || input_.depth() != 0 || units_running_ != 0 ||
      ends_seen_ != 0 || !batcher_.empty() || core_.cancelled() ||
      !(fast_path() || runner_->answers_at_once())) {
    return false;
  }
  Outbox& out = outbox_;
  if (fast_path()) {
    const std::uint16_t port = packet.port;
    handle_inline(std::move(packet), port);  // as if fused
  } else if (counters_.received.add(); accept_data(packet, out)) {
    direct_batch_.push_back(std::move(packet.msg));
    counters_.batches.add();
    std::unique_ptr<StartedBatch> started = runner_->start_now(direct_batch_, spec_.timeout);
    direct_batch_.clear();  // what a runner that could not start it left
    if (!started->done()) {
      // Not answered within the spin: a unit waits for it, holding a slot.
      slots_->try_send(error_code{});  // free: no unit runs
      ++units_running_;
      core_.spawn(finish_started(std::move(started)));
      return true;
    }
    count_busy_ns(started->outcome.handed_to_finished_ns);
    conclude_started(*started, out);
    runner_->recycle(std::move(started));
  }
  // What it made leaves now; what cannot waits in the outbox, which the node's
  // own coroutine sends once this wakes it.
  if (!out.empty() && !try_send_all(out)) {
    Packet wake;
    wake.kind = PacketKind::flush;
    input_.try_send(wake);  // the input is empty: there is room
  }
  return true;
}

void TransformProcessor::conclude_started(StartedBatch& started, Outbox& out) {
  StepOutcome& outcome = started.outcome;
  if (!outcome.ok() && outcome.code == errc{}) outcome.code = errc::step_failed;
  if (outcome.expired) counters_.expired.add(started.batch.size());
  conclude(started.batch, started.results, outcome, out);
}

asio::awaitable<void> TransformProcessor::finish_started(std::unique_ptr<StartedBatch> started) {
  const UnitSlot slot(this);
  Outbox out;
  try {
    const auto started_at = Clock::now();
    co_await started->wait();
    if (core_.cancelled()) throw boost::system::system_error(asio::error::operation_aborted);
    if (const std::uint64_t ns = started->outcome.handed_to_finished_ns) {
      count_busy_ns(ns);  // since it was handed over, before this unit began
    } else {
      count_busy(started_at);
    }
    conclude_started(*started, out);
    if (!try_send_all(out)) co_await send_all(out);
  } catch (...) {
    if (!core_.cancelled()) throw;
    cancel_held(out, started->batch);
  }
}

}  // namespace plumber::detail
