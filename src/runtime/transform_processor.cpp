#include "runtime/transform_processor.hpp"

#include <algorithm>
#include <chrono>
#include <exception>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <boost/asio/use_awaitable.hpp>

#include "runtime/attempts.hpp"
#include "runtime/pipeline_core.hpp"
#include "runtime/transform_checks.hpp"

namespace plumber::detail {

using asio::use_awaitable;

namespace {

std::uint64_t elapsed_ns(Clock::time_point since) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - since).count());
}

}  // namespace

TransformProcessor::TransformProcessor(PipelineCore& core, const NodeSpec& spec,
                                       const CoroutineInfo& info, const PredicateInfo* when)
    : Processor(core, spec, info),
      when_(when),
      // A batch is gathered from what waits in the input: the input holds at
      // least a batch (docs/graph-format.md, batch_size).
      input_(core.strand(), std::max(spec.queue_size, spec.batch_size),
             core.graph().settings.priorities, core.options().collect_timings),
      runner_(make_step_runner({spec_, core.strand(), core.graph().settings.priorities,
                                core.options().worker_start_timeout, core.graph().name,
                                [this] { return input_.depth(); }, info.capabilities.runs_programs},
                               info.make_transform(spec_.params))),
      batcher_(core.strand(), spec.batch_size, spec.batch_timeout) {
  inline_step_ = runner_->inline_step();
  timed_ = core_.options().collect_timings || spec_.timeout.has_value() || core_.tracer();
  // In place, a step call is not measured: not when timed, retried or traced.
  const bool plain =
      spec_.retries == 0 && !spec_.timeout && !core_.options().collect_timings && !core_.tracer();
  if (plain) in_place_ = dynamic_cast<InPlaceTransform*>(inline_step_);
  // Direct calls (try_take_now), one message a batch, no zip: a synchronous
  // step (as if fused, when its predecessors could not fuse it), or a step in
  // worker processes whose one attempt needs no timer or retry policy.
  const bool one_by_one = spec_.batch_size == 1 && spec_.join != JoinPolicy::zip;
  direct_calls_ =
      one_by_one &&
      (fast_path() || (spec_.procs > 0 && !spec_.remote && !info.capabilities.runs_programs &&
                       spec_.retries == 0 && !spec_.timeout && !core_.tracer()));
  // A direct call the worker does not answer at once is awaited by a unit of
  // its own, which holds a slot like any other (even at concurrency 1).
  if (!fast_path() && (spec_.concurrency > 1 || direct_calls_))
    slots_.emplace(core_.strand(), spec_.concurrency);
}

TransformProcessor::~TransformProcessor() = default;

void TransformProcessor::add_predecessor(std::uint16_t port, const std::string& name) {
  if (input_names_.size() <= port) input_names_.resize(port + 1);
  input_names_[port] = name;
  if (spec_.join == JoinPolicy::zip) zip_.emplace(input_names_);
}

ProcessorStats TransformProcessor::stats() const {
  ProcessorStats s = Processor::stats();
  s.queue_depth = input_.depth();
  input_.read_waits(s);
  s.workers = runner_->worker_stats();
  s.remote = runner_->remote_stats();
  return s;
}

asio::awaitable<void> TransformProcessor::run() {
  runner_->serve([this](asio::awaitable<void> task) { core_.spawn(std::move(task)); });
  try {
    co_await receive_loop();
  } catch (...) {
    if (!core_.cancelled()) throw;
    cancel_everything_held(outbox_);
  }
}

asio::awaitable<void> TransformProcessor::receive_loop() {
  Outbox& out = outbox_;
  for (;;) {
    Packet packet;
    if (!input_.try_receive(packet)) {
      if (!batcher_.empty() && !batcher_.waits()) {
        // Batch timeout 0: take what is queued, never wait for more.
        co_await dispatch_batch();
        if (!out.empty() && !try_send_all(out)) co_await send_all(out);
        continue;
      }
      packet = co_await input_.async_receive();
    }
    switch (packet.kind) {
      case PacketKind::data: {
        counters_.received.add();
        if (!take_part(packet, out) || !accept_data(packet, out)) break;
        const bool full = batcher_.add(std::move(packet.msg));
        if (!full) {
          if (auto timer = batcher_.arm(input_)) core_.spawn(std::move(*timer));
          break;
        }
        if (fast_path()) {  // the hot path: no coroutine frame per message
          compute_now(batcher_.current(), out);
          if (zip_) zip_->recycle(batcher_.current().front().value);  // dead, as below
          batcher_.clear();
        } else {
          co_await dispatch_batch();
        }
        break;
      }
      case PacketKind::dropped:
        take_dropped(packet, out);
        break;
      case PacketKind::flush:
        if (batcher_.due(packet.msg.id)) co_await dispatch_batch();
        break;
      case PacketKind::end:
        if (++ends_seen_ < input_names_.size()) break;
        co_await finish_input(out);
        co_return;
    }
    if (!out.empty() && !try_send_all(out)) co_await send_all(out);
  }
}

// With a zip: holds the part until every input delivered its id. True when
// `packet` is then data to process (the combination, or a message without zip).
[[gnu::noinline]] bool TransformProcessor::take_zip_part(Packet& packet, Outbox& out) {
  std::int64_t tokens = 0;
  if (!zip_->add(packet, tokens)) return false;
  core_.track(packet.msg.id, tokens);
  if (packet.kind == PacketKind::data) return true;
  // A part was dropped upstream: so is the whole id.
  if (feeds_zip_) out.packets.push_back(std::move(packet));
  return false;
}

void TransformProcessor::take_dropped(Packet& packet, Outbox& out) {
  if (zip_) {
    take_part(packet, out);
  } else if (feeds_zip_) {
    out.packets.push_back(std::move(packet));
  }
}

void TransformProcessor::release_zip_leftovers(Outbox& out) {
  if (!zip_) return;
  for (const ZipJoiner::Leftover& left : zip_->take_leftovers()) {
    // Ids already reported upstream (dropped parts) need no second record.
    if (left.data_parts > 0) {
      counters_.errors.add();
      core_.output_error(spec_.id, left.id, "zip: no message with this id from " + left.missing);
      core_.track(left.id, -left.data_parts);
    }
    if (feeds_zip_) out.packets.push_back(dropped_packet(left.id));
  }
}

asio::awaitable<void> TransformProcessor::finish_input(Outbox& out) {
  if (!batcher_.empty()) co_await dispatch_batch();
  co_await wait_units_idle();
  runner_->close();
  batcher_.cancel_timer();
  release_zip_leftovers(out);
  if (!try_send_all(out)) co_await send_all(out);
  co_await send_end();
}

[[gnu::noinline]] bool TransformProcessor::screen_data(Packet& packet, Outbox& out) {
  Message& message = packet.msg;
  if (core_.tracking() && !core_.note_position(message.id, spec_.id)) {
    counters_.cancelled.add();  // its caller cancelled the request: nobody waits
    core_.track(message.id, -1);
    if (feeds_zip_) out.packets.push_back(dropped_packet(message.id));
    return false;
  }
  if (message.deadline != Clock::time_point::max() && Clock::now() > message.deadline) {
    counters_.expired.add();
    counters_.errors.add();
    core_.output_error(spec_.id, message.id, "deadline passed before the step ran",
                       errc::timed_out);
    core_.track(message.id, -1);
    if (feeds_zip_) out.packets.push_back(dropped_packet(message.id));
    return false;
  }
  if (when_ && !when_->test(message.value)) {
    counters_.skipped.add();
    out.packets.push_back(std::move(packet));
    return false;
  }
  return true;
}

void TransformProcessor::handle_inline(Packet&& packet, std::uint16_t port) {
  packet.port = port;
  switch (packet.kind) {
    case PacketKind::data:
      counters_.received.add();
      if (!take_part(packet, outbox_)) return;
      if (in_place_) {
        pass_in_place(packet);
      } else if (accept_data(packet, outbox_)) {
        compute_now({&packet.msg, 1}, outbox_);
      }
      // What the step and the fused nodes after it left here is dead (a value
      // passed on or queued was moved away).
      if (zip_) zip_->recycle(packet.msg.value);
      return;
    case PacketKind::dropped:
      take_dropped(packet, outbox_);
      return;
    case PacketKind::end:  // once every predecessor ended, so does this node
      if (++ends_seen_ < input_names_.size()) return;
      release_zip_leftovers(outbox_);
      outbox_.packets.push_back(std::move(packet));
      return;
    case PacketKind::flush:
      return;
  }
}

// The fused fast path: the message is edited where it lies and goes on by
// reference. One output with the input's id and envelope: nothing to track.
void TransformProcessor::pass_in_place(Packet& packet) {
  if (!accept_data(packet, outbox_)) return;
  counters_.batches.add();
  try {
    StepWatch::Scope watched(core_.step_watch(), spec_.id, true);
    in_place_->apply(packet.msg);
  } catch (const std::exception& e) {
    fail_batch({&packet.msg, 1}, {errc::step_failed, e.what(), false}, outbox_);
    return;
  }
  if (!idle() || !try_pass_on(packet)) outbox_.packets.push_back(std::move(packet));
}

void TransformProcessor::cancel_held_parts() {
  if (!zip_) return;
  for (std::uint64_t id : zip_->take_ids())
    core_.output_cancelled(spec_.id, id);
}

// --- running the step ------------------------------------------------------------

asio::awaitable<void> TransformProcessor::dispatch_batch() {
  if (fast_path()) {  // a synchronous step computes the batch in place
    compute_now(batcher_.current(), outbox_);
    batcher_.clear();
    co_return;
  }
  // Wait for a free slot while the batch is still the batcher's: cancelled
  // here, the batch is reported from there.
  batcher_.cancel_timer();
  if (slots_ && runner_->answers_at_once()) {
    // Its answer is due within microseconds, and nothing else to overlap it
    // with is worth a unit (the runner weighs what waits in the input): run
    // it here. A unit of its own would cost a scheduler pass (co_spawn) or two
    // (the slot) for a round trip that takes less.
    ++units_running_;
    struct Done {
      std::size_t& running;
      ~Done() { --running; }
    } done{units_running_};
    co_await run_unit(batcher_.take(), false);
    co_return;
  }
  if (slots_) {
    // try_send first: a free slot then costs no scheduler pass (an
    // async_send completes through a post even when there is room).
    if (!slots_->try_send(error_code{})) co_await slots_->async_send(error_code{}, use_awaitable);
    ++units_running_;  // given back by run_unit
  }
  std::vector<Message> batch = batcher_.take();
  if (slots_) {
    core_.spawn(run_unit(std::move(batch), true));
  } else {
    co_await run_unit(std::move(batch), false);
  }
}

void TransformProcessor::compute_now(std::span<Message> batch, Outbox& out) {
  const bool timed = timed_;
  if (!timed && spec_.retries == 0) {
    // The hottest path (a fused chain): one attempt, nothing to measure.
    results_.clear();
    counters_.batches.add();
    if (batch.size() > 1) counters_.larger_batches.observe(batch.size());
    try {
      StepWatch::Scope watched(core_.step_watch(), spec_.id, true);
      inline_step_->process(batch, results_);
    } catch (const std::exception& e) {
      fail_batch(batch, {errc::step_failed, e.what(), false}, out);
      return;
    }
    collect_outputs(batch, results_, out);
    return;
  }
  Attempts attempts(spec_, batch);
  StepOutcome outcome;
  for (;;) {
    outcome.reset();
    results_.clear();
    const auto started = timed ? Clock::now() : Clock::time_point{};
    counters_.batches.add();
    if (batch.size() > 1) counters_.larger_batches.observe(batch.size());
    try {
      StepWatch::Scope watched(core_.step_watch(), spec_.id, true);
      inline_step_->process(batch, results_);
    } catch (const std::exception& e) {
      outcome.code = errc::step_failed;
      outcome.failure = e.what();
    }
    if (timed) {
      const auto ns = count_busy(started);
      // A synchronous step cannot be interrupted: a late result is discarded.
      if (outcome.ok() && spec_.timeout && std::chrono::nanoseconds(ns) > *spec_.timeout) {
        outcome.code = errc::timed_out;
        outcome.failure = timeout_text(*spec_.timeout);
      }
      if (auto* tracer = core_.tracer()) tracer->step(spec_.id, started, ns, batch, !outcome.ok());
    }
    if (!attempts.retry(outcome, batch, results_)) break;
    counters_.retried.add();
  }
  if (outcome.ok()) {
    collect_outputs(batch, results_, out);
  } else {
    fail_batch(batch, outcome, out);
  }
}

asio::awaitable<void> TransformProcessor::compute(std::vector<Message>& batch, Outbox& out) {
  std::vector<Message> results;
  Attempts attempts(spec_, batch);
  StepOutcome outcome;
  for (;;) {
    const auto started = Clock::now();
    counters_.batches.add();
    if (batch.size() > 1) counters_.larger_batches.observe(batch.size());
    {
      // Worker processes are bounded by kill_after_ms, not watched here.
      StepWatch::Scope watched(spec_.procs == 0 ? core_.step_watch() : nullptr, spec_.id, false);
      outcome = co_await runner_->run(batch, results, attempts.limits());
    }
    if (core_.cancelled()) throw boost::system::system_error(asio::error::operation_aborted);
    const auto ns = count_busy(started);
    if (auto* tracer = core_.tracer()) {
      tracer->step(spec_.id, started, ns, batch, !outcome.ok(), outcome.worker_pid,
                   outcome.worker_started_ns, outcome.worker_finished_ns);
    }
    if (outcome.expired) counters_.expired.add(batch.size());
    if (!attempts.retry(outcome, batch, results)) break;
    counters_.retried.add();
  }
  conclude(batch, results, outcome, out);
}

void TransformProcessor::conclude(std::vector<Message>& batch, std::vector<Message>& results,
                                  const StepOutcome& outcome, Outbox& out) {
  if (!outcome.ok()) {
    fail_batch(batch, outcome, out);
    return;
  }
  if (!outcome.message_errors.empty() || !outcome.expired_ids.empty())
    fail_messages(batch, outcome, out);
  collect_outputs(batch, results, out);
}

std::uint64_t TransformProcessor::count_busy(Clock::time_point started) {
  const std::uint64_t ns = elapsed_ns(started);
  count_busy_ns(ns);
  return ns;
}

void TransformProcessor::count_busy_ns(std::uint64_t ns) {
  counters_.busy_ns.add(ns);
  counters_.busy_buckets.observe(ns);
}

void TransformProcessor::fail_messages(std::vector<Message>& batch, const StepOutcome& outcome,
                                       Outbox& out) {
  // Reported here, and gone from the batch: collect_outputs sees only the others.
  std::unordered_set<std::uint64_t> failed;
  auto fail = [&](std::uint64_t id, const std::string& error, errc code) {
    if (!failed.insert(id).second) return;
    counters_.errors.add();
    core_.output_error(spec_.id, id, error, code);
    core_.track(id, -1);
    if (feeds_zip_) out.packets.push_back(dropped_packet(id));
  };
  for (const auto& [id, error] : outcome.message_errors)
    fail(id, error, errc::step_failed);
  for (std::uint64_t id : outcome.expired_ids) {
    counters_.expired.add();
    fail(id, "deadline passed before the step ran", errc::timed_out);
  }
  std::erase_if(batch, [&](const Message& m) { return failed.contains(m.id); });
}

TransformProcessor::UnitSlot::~UnitSlot() {
  if (!node) return;
  node->slots_->try_receive([](error_code) {});
  --node->units_running_;
}

asio::awaitable<void> TransformProcessor::run_unit(std::vector<Message> batch, bool release_slot) {
  // Gives the concurrency slot back however the unit ends.
  const UnitSlot slot(release_slot ? this : nullptr);
  Outbox out;
  try {
    co_await compute(batch, out);
    if (!try_send_all(out)) co_await send_all(out);
  } catch (...) {
    if (!core_.cancelled()) throw;
    cancel_held(out, batch);
  }
}

asio::awaitable<void> TransformProcessor::wait_units_idle() {
  if (!slots_) co_return;
  // Taking every slot means every unit has finished.
  for (std::size_t i = 0; i < spec_.concurrency; ++i) {
    co_await slots_->async_send(error_code{}, use_awaitable);
  }
  for (std::size_t i = 0; i < spec_.concurrency; ++i)
    slots_->try_receive([](error_code) {});
}

void TransformProcessor::collect_outputs(std::span<const Message> batch,
                                         std::vector<Message>& results, Outbox& out) {
  // Every output keeps the envelope of its input, whatever ran the step.
  if (batch.size() == 1) {
    for (Message& m : results) {
      if (m.id == batch.front().id) inherit_envelope(m, batch.front());
    }
  } else if (!results.empty()) {
    std::unordered_map<std::uint64_t, const Message*> by_id;
    for (const Message& m : batch)
      by_id.emplace(m.id, &m);
    for (Message& m : results) {
      if (auto it = by_id.find(m.id); it != by_id.end()) inherit_envelope(m, *it->second);
    }
  }
  if (feeds_zip_ && batch.size() == 1) {
    // A zip downstream must learn which ids produced nothing here.
    const std::uint64_t id = batch.front().id;
    if (std::none_of(results.begin(), results.end(), [id](const Message& m) { return m.id == id; }))
      out.packets.push_back(dropped_packet(id));
  } else if (feeds_zip_) {
    std::unordered_set<std::uint64_t> produced;
    for (const Message& m : results)
      produced.insert(m.id);
    for (const Message& m : batch) {
      if (!produced.contains(m.id)) out.packets.push_back(dropped_packet(m.id));
    }
  }
  if (core_.tracking()) {  // results first: a request must not see zero in between
    for (const Message& m : results)
      core_.track(m.id, +1);
    for (const Message& m : batch)
      core_.track(m.id, -1);
  }
  for (Message& m : results)
    out.packets.emplace_back(PacketKind::data, std::uint16_t{0}, std::move(m));
  results.clear();
}

void TransformProcessor::fail_batch(std::span<const Message> batch, const StepOutcome& outcome,
                                    Outbox& out) {
  for (const Message& m : batch) {
    counters_.errors.add();
    core_.output_error(spec_.id, m.id, outcome.failure, outcome.code);
    core_.track(m.id, -1);
    if (feeds_zip_) out.packets.push_back(dropped_packet(m.id));
  }
}

// --- cancellation ------------------------------------------------------------------

void TransformProcessor::cancel_everything_held(Outbox& out) {
  cancel_held(out, batcher_.current());
  batcher_.clear();
  cancel_held_parts();
  Packet packet;
  while (input_.try_receive(packet)) {
    if (packet.kind == PacketKind::data) core_.output_cancelled(spec_.id, packet.msg.id);
  }
}

}  // namespace plumber::detail
