#include "runtime/processor.hpp"

#include <algorithm>
#include <chrono>
#include <exception>
#include <string>
#include <unordered_set>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "runtime/pipeline_core.hpp"
#include "workers/worker_pool.hpp"

namespace plumber::detail {

using asio::use_awaitable;

namespace {

std::uint64_t elapsed_ns(Clock::time_point since) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - since).count());
}

constexpr std::uint64_t kYieldEvery = 512;

Packet dropped_packet(std::uint64_t id) {
  Packet packet;
  packet.kind = PacketKind::dropped;
  packet.msg.id = id;
  return packet;
}

std::string timeout_text(std::chrono::milliseconds limit) {
  return "timed out after " + std::to_string(limit.count()) + " ms";
}

/// The latest deadline of the batch's messages (max when one has none).
Clock::time_point batch_deadline(std::span<const Message> batch) {
  Clock::time_point latest = Clock::time_point::min();
  for (const Message& m : batch)
    latest = std::max(latest, m.deadline);
  return batch.empty() ? Clock::time_point::max() : latest;
}

}  // namespace

Processor::Processor(PipelineCore& core, const NodeSpec& spec, const CoroutineInfo& info,
                     const PredicateInfo* when)
    : core_(core), spec_(spec), coroutine_(info.name), when_(when) {
  if (info.kind == CoroutineKind::source) {
    source_ = info.make_source(spec_.params);
    return;
  }
  transform_ = info.make_transform(spec_.params);
  is_zip_ = spec_.join == JoinPolicy::zip;
  input_.emplace(core_.strand(), spec_.queue_size, core_.graph().settings.priorities);
  batch_.reserve(spec_.batch_size);
  if (spec_.batch_timeout.count() > 0) batch_timer_.emplace(core_.strand());
  if (spec_.threads > 0) pool_.emplace(spec_.threads);
  if (spec_.procs > 0) {
    workers_ =
        std::make_unique<WorkerPool>(spec_, core_.strand(), core_.options().worker_start_timeout);
  }
  if (spec_.concurrency > 1) slots_.emplace(core_.strand(), spec_.concurrency);
}

Processor::~Processor() {
  if (pool_) pool_->join();
}

void Processor::connect(Processor& successor, std::uint16_t port) {
  successors_.push_back({&successor, port});
  ++successor.inputs_;
  if (successor.input_names_.size() <= port) successor.input_names_.resize(port + 1);
  successor.input_names_[port] = spec_.id;
}

void Processor::on_start() {
  if (source_) {
    source_->on_start();
  } else if (workers_) {
    workers_->start();  // on_start runs in each worker, never here
  } else {
    transform_->on_start();
  }
}

bool Processor::stopping() const noexcept {
  return core_.sources_stopping() || core_.cancelled();
}

ProcessorStats Processor::stats() const {
  ProcessorStats s;
  s.node = spec_.id;
  s.coroutine = coroutine_;
  s.received = source_ ? emitted_.get() : received_.get();
  s.emitted = emitted_.get();
  s.errors = errors_.get();
  s.skipped = skipped_.get();
  s.expired = expired_.get();
  s.retried = retried_.get();
  s.batches = batches_.get();
  s.busy_ns = busy_ns_.get();
  s.busy_buckets = busy_histogram_.get();
  s.queue_depth = queued_.get();
  if (workers_) s.workers = workers_->stats();
  return s;
}

asio::awaitable<void> Processor::run() {
  if (workers_) workers_->run([this](asio::awaitable<void> task) { core_.spawn(std::move(task)); });
  if (source_) {
    co_await run_source();
  } else {
    co_await run_transform();
  }
}

// --- sending -----------------------------------------------------------------

bool Processor::try_send_all(Outbox& out) {
  const bool cancelled = core_.cancelled();
  for (; out.next_packet < out.packets.size(); ++out.next_packet, out.next_successor = 0) {
    Packet& packet = out.packets[out.next_packet];
    if (cancelled) {
      if (packet.kind == PacketKind::data) core_.output_cancelled(spec_.id, packet.msg.id);
      continue;
    }
    if (fused_) {
      // The successor runs inline, once its own outputs have left.
      Outbox& downstream = fused_->outbox_;
      if (!downstream.packets.empty() && !fused_->try_send_all(downstream)) return false;
      if (packet.kind == PacketKind::data) emitted_.add();
      fused_->handle_inline(std::move(packet));
      continue;
    }
    if (successors_.empty()) {  // a sink: what it emits is the pipeline's output
      if (packet.kind == PacketKind::data) {
        emitted_.add();
        core_.output_value(spec_.id, std::move(packet.msg));
      }
      continue;
    }
    for (; out.next_successor < successors_.size(); ++out.next_successor) {
      const Successor& to = successors_[out.next_successor];
      const bool last = out.next_successor + 1 == successors_.size();
      // Fan-out copies the value and shares the blobs; the last successor gets
      // the original. try_send leaves its argument untouched when it fails.
      Packet copy;
      Packet& sent = last ? packet : (copy = packet);
      sent.port = to.port;
      if (!to.target->input_->try_send(sent)) return false;
      to.target->queued_.add();
      if (!last && packet.kind == PacketKind::data) core_.track(packet.msg.id, +1);
    }
    if (packet.kind == PacketKind::data) emitted_.add();
  }
  out.clear();
  return !fused_ || fused_->outbox_.packets.empty() || fused_->try_send_all(fused_->outbox_);
}

asio::awaitable<void> Processor::send_all(Outbox& out) {
  while (!try_send_all(out)) {
    if (fused_ && !fused_->outbox_.packets.empty()) {  // blocked beyond the fused successor
      co_await fused_->send_all(fused_->outbox_);
      continue;
    }
    Packet& packet = out.packets[out.next_packet];
    const Successor& to = successors_[out.next_successor];
    const bool last = out.next_successor + 1 == successors_.size();
    Packet sent = last ? std::move(packet) : packet;
    sent.port = to.port;
    const auto id = sent.msg.id;
    const bool is_data = sent.kind == PacketKind::data;
    if (!last && is_data) core_.track(id, +1);  // the copy exists from now on
    try {
      co_await to.target->input_->async_send(std::move(sent));
    } catch (...) {
      // Cancelled while waiting for room: this and every later packet is lost.
      if (is_data) core_.output_cancelled(spec_.id, id);
      ++out.next_packet;
      out.next_successor = 0;
      cancel_held(out, {});
      throw;
    }
    to.target->queued_.add();
    if (++out.next_successor == successors_.size()) {
      if (is_data) emitted_.add();
      ++out.next_packet;
      out.next_successor = 0;
    }
  }
}

asio::awaitable<void> Processor::send_end() {
  Outbox out;
  out.packets.push_back(Packet{PacketKind::end, 0, {}});
  if (!try_send_all(out)) co_await send_all(out);
}

// --- sources -----------------------------------------------------------------

asio::awaitable<void> Processor::emit(json value, std::uint8_t priority) {
  Outbox out;
  Message message;
  message.id = core_.next_id();
  message.value = std::move(value);
  message.priority = priority;
  out.packets.push_back(Packet{PacketKind::data, 0, std::move(message)});
  if (!try_send_all(out)) co_await send_all(out);
}

asio::awaitable<void> Processor::run_source() {
  if (feed_) {
    co_await run_feed_source();
  } else if (source_->is_async()) {
    try {
      co_await source_->run(*this);
    } catch (const std::exception& e) {
      if (core_.cancelled()) throw;
      errors_.add();
      core_.output_error(spec_.id, core_.next_id(), e.what());
    }
  } else {
    Outbox& out = outbox_;
    for (std::uint64_t emitted = 1; !stopping(); ++emitted) {
      // A source whose successors never fill (a fused chain) would otherwise
      // hold the strand until it ends: let stop() and timers in now and then.
      if (emitted % kYieldEvery == 0) co_await asio::post(core_.strand(), use_awaitable);
      std::optional<json> value;
      try {
        value = source_->next();
      } catch (const SourceItemError& e) {
        errors_.add();
        core_.output_error(spec_.id, core_.next_id(), e.what());
        continue;
      } catch (const std::exception& e) {
        errors_.add();
        core_.output_error(spec_.id, core_.next_id(), e.what());
        break;
      }
      if (!value) break;
      Message message;
      message.id = core_.next_id();
      message.value = std::move(*value);
      out.packets.push_back(Packet{PacketKind::data, 0, std::move(message)});
      if (!try_send_all(out)) co_await send_all(out);
    }
  }
  co_await send_end();
}

asio::awaitable<void> Processor::run_feed_source() {
  auto& channel = feed_->channel;
  Outbox& out = outbox_;
  bool open = true;
  while (open) {
    std::optional<FeedItem> item = take_feed_item();
    if (!item) {
      // No structured binding of a co_await result, and no `continue` past a
      // live local: g++ 12 destroys such locals twice.
      std::tuple<error_code, FeedItem> received =
          co_await channel.async_receive(asio::as_tuple(use_awaitable));
      if (!std::get<0>(received)) item = std::move(std::get<1>(received));
    }
    open = item && accept_feed_item(std::move(*item), out);
    if (!out.packets.empty() && !try_send_all(out)) co_await send_all(out);
  }
  // Anything fed after the end (or after stop) is refused, never left unread:
  // close() alone would drop what is buffered.
  feed_->ended = true;
  for (std::optional<FeedItem> left = take_feed_item(); left; left = take_feed_item()) {
    if (left->request) {
      core_.finish(*left->request,
                   std::make_exception_ptr(ProcessError(errc::pipeline_stopped, spec_.id,
                                                        "input ended before this request")));
    } else if (left->value) {
      core_.output_cancelled(spec_.id, core_.next_id());
    }
  }
  channel.close();
}

std::optional<FeedItem> Processor::take_feed_item() {
  std::optional<FeedItem> item;
  feed_->channel.try_receive([&](error_code, FeedItem i) { item = std::move(i); });
  return item;
}

bool Processor::accept_feed_item(FeedItem&& item, Outbox& out) {
  if (item.error.is_string()) {
    errors_.add();
    core_.output_error(spec_.id, core_.next_id(), item.error.get<std::string>());
  }
  if (item.value) {
    // A request that timed out while queued was answered already: it never enters.
    if (item.request && item.request->finished) return !item.end;
    Packet packet;
    packet.msg.id = core_.next_id();
    packet.msg.value = std::move(*item.value);
    if (item.request) {
      packet.msg.priority = item.request->priority;
      packet.msg.deadline = item.request->deadline;
      core_.admit_request(packet.msg.id, item.request);
    }
    out.packets.push_back(std::move(packet));
  }
  return !item.end;
}

// --- transforms --------------------------------------------------------------

bool Processor::try_take(Packet& packet) {
  const bool got = input_->try_receive(packet);
  if (got) queued_.sub();
  return got;
}

bool Processor::fast_path() const noexcept {
  // A synchronous step on the strand runs one message at a time whatever its
  // concurrency: only async steps, thread pools and worker pools take the
  // slower path.
  return !transform_->is_async() && !pool_ && !workers_;
}

asio::awaitable<void> Processor::run_transform() {
  Outbox& out = outbox_;
  try {
    for (;;) {
      Packet packet;
      if (!try_take(packet)) {
        if (!batch_.empty() && spec_.batch_timeout.count() == 0) {
          // Batch timeout 0: take what is queued, never wait for more.
          co_await dispatch_batch();
          if (!out.packets.empty() && !try_send_all(out)) co_await send_all(out);
          continue;
        }
        packet = co_await input_->async_receive();
        queued_.sub();
      }
      switch (packet.kind) {
        case PacketKind::data: {
          if (!accept_data(packet, out)) break;
          Message& message = packet.msg;
          batch_.push_back(std::move(message));
          if (batch_.size() < spec_.batch_size) {
            if (batch_.size() == 1 && batch_timer_) arm_batch_timer();
            break;
          }
          if (fast_path()) {  // the hot path: no coroutine frame per message
            compute_sync(batch_, out);
            batch_.clear();
          } else {
            co_await dispatch_batch();
          }
          break;
        }
        case PacketKind::dropped:
          if (is_zip_) {
            if (zip_take(packet) && feeds_zip_) out.packets.push_back(std::move(packet));
          } else if (feeds_zip_) {
            out.packets.push_back(std::move(packet));
          }
          break;
        case PacketKind::flush:
          if (packet.msg.id == batch_generation_ && !batch_.empty()) co_await dispatch_batch();
          break;
        case PacketKind::end:
          if (++ends_seen_ < inputs_) break;
          if (!batch_.empty()) co_await dispatch_batch();
          co_await wait_units_idle();
          if (workers_) workers_->close();
          if (batch_timer_) batch_timer_->cancel();
          flush_zip_leftovers(out);
          if (!try_send_all(out)) co_await send_all(out);
          co_await send_end();
          co_return;
      }
      if (!out.packets.empty() && !try_send_all(out)) co_await send_all(out);
    }
  } catch (...) {
    if (!core_.cancelled()) throw;
    cancel_held(out, batch_);
    batch_.clear();
    for (auto& [id, entry] : zip_)
      core_.output_cancelled(spec_.id, id);
    zip_.clear();
    drain_input_cancelled();
  }
}

bool Processor::accept_data(Packet& packet, Outbox& out) {
  received_.add();
  if (is_zip_ && !zip_take(packet)) return false;
  if (packet.kind == PacketKind::dropped) {  // the zip lost one of its parts
    if (feeds_zip_) out.packets.push_back(std::move(packet));
    return false;
  }
  Message& message = packet.msg;
  if (message.deadline != Clock::time_point::max() && Clock::now() > message.deadline) {
    expired_.add();
    errors_.add();
    core_.output_error(spec_.id, message.id, "deadline passed before the step ran",
                       errc::timed_out);
    core_.track(message.id, -1);
    if (feeds_zip_) out.packets.push_back(dropped_packet(message.id));
    return false;
  }
  if (when_ && !when_->test(message.value)) {
    skipped_.add();
    out.packets.push_back(std::move(packet));
    return false;
  }
  return true;
}

bool Processor::fusible() const noexcept {
  return fast_path() && spec_.batch_size == 1 && !is_zip_ && inputs_ == 1;
}

void Processor::fuse(Processor& successor) {
  fused_ = &successor;
  successor.fused_in_ = true;
}

void Processor::handle_inline(Packet&& packet) {
  switch (packet.kind) {
    case PacketKind::data:
      if (accept_data(packet, outbox_)) compute_sync({&packet.msg, 1}, outbox_);
      return;
    case PacketKind::dropped:
      if (feeds_zip_) outbox_.packets.push_back(std::move(packet));
      return;
    case PacketKind::end:  // the only predecessor ended: so does this node
      outbox_.packets.push_back(std::move(packet));
      return;
    case PacketKind::flush:
      return;
  }
}

asio::awaitable<void> Processor::dispatch_batch() {
  if (batch_timer_) batch_timer_->cancel();
  if (fast_path()) {
    compute_sync(batch_, outbox_);
    batch_.clear();
    co_return;
  }
  // Wait for a free slot while the batch is still ours: cancelled here, the
  // dispatcher reports batch_.
  if (slots_) co_await slots_->async_send(error_code{}, use_awaitable);
  std::vector<Message> batch;
  batch.swap(batch_);
  batch_.reserve(spec_.batch_size);
  if (slots_) {
    core_.spawn(run_unit(std::move(batch), true));
  } else {
    co_await run_unit(std::move(batch), false);
  }
}

asio::awaitable<void> Processor::wait_units_idle() {
  if (!slots_) co_return;
  // Taking every slot means every unit has finished.
  for (std::size_t i = 0; i < spec_.concurrency; ++i) {
    co_await slots_->async_send(error_code{}, use_awaitable);
  }
  for (std::size_t i = 0; i < spec_.concurrency; ++i)
    slots_->try_receive([](error_code) {});
}

void Processor::arm_batch_timer() {
  ++batch_generation_;
  batch_timer_->expires_after(spec_.batch_timeout);  // cancels the previous wait
  core_.spawn(wait_batch_timer(batch_generation_));
}

asio::awaitable<void> Processor::wait_batch_timer(std::uint64_t generation) {
  const std::tuple<error_code> waited =
      co_await batch_timer_->async_wait(asio::as_tuple(use_awaitable));
  if (std::get<0>(waited) || generation != batch_generation_ || batch_.empty()) co_return;
  // The dispatcher is waiting in async_receive (or busy): a flush packet wakes it.
  Packet flush{PacketKind::flush, 0, {}};
  flush.msg.id = generation;
  if (!input_->try_send(flush)) co_await input_->async_send(std::move(flush));
  queued_.add();
}

void Processor::collect_outputs(std::span<const Message> batch, std::vector<Message>& results,
                                Outbox& out) {
  if (feeds_zip_) {
    // A zip downstream must learn which ids produced nothing here.
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

void Processor::fail_batch(std::span<const Message> batch, const std::string& error, Outbox& out,
                           errc code) {
  for (const Message& m : batch) {
    errors_.add();
    core_.output_error(spec_.id, m.id, error, code);
    core_.track(m.id, -1);
    if (feeds_zip_) out.packets.push_back(dropped_packet(m.id));
  }
}

void Processor::compute_sync(std::span<Message> batch, Outbox& out) {
  const bool timed = core_.options().collect_timings || spec_.timeout.has_value();
  std::vector<Message> backup;
  for (std::size_t attempt = 0;; ++attempt) {
    const bool can_retry = attempt < spec_.retries;
    if (can_retry) backup.assign(batch.begin(), batch.end());  // the step may move from its inputs
    results_.clear();
    const auto started = timed ? Clock::now() : Clock::time_point{};
    try {
      batches_.add();
      transform_->process(batch, results_);
      if (timed) {
        const auto ns = elapsed_ns(started);
        busy_ns_.add(ns);
        busy_histogram_.observe(ns);
        // A synchronous step cannot be interrupted: a late result is discarded.
        if (spec_.timeout && std::chrono::nanoseconds(ns) > *spec_.timeout) {
          throw std::runtime_error(timeout_text(*spec_.timeout));
        }
      }
      collect_outputs(batch, results_, out);
      return;
    } catch (const std::exception& e) {
      if (can_retry) {
        retried_.add();
        std::move(backup.begin(), backup.end(), batch.begin());
        continue;
      }
      fail_batch(batch, e.what(), out);
      return;
    }
  }
}

asio::awaitable<void> Processor::compute_async(std::vector<Message>& batch, Outbox& out) {
  using namespace asio::experimental::awaitable_operators;
  std::vector<Message> results;
  std::vector<Message> backup;
  for (std::size_t attempt = 0;; ++attempt) {
    const bool can_retry = attempt < spec_.retries;
    if (can_retry) backup = batch;
    results.clear();
    const auto started = Clock::now();
    std::string failure;
    errc failure_code = errc::step_failed;
    try {
      batches_.add();
      if (workers_) {
        co_await workers_->process(batch, results, failure, spec_.timeout);
      } else if (transform_->is_async()) {
        // An async step is interrupted at its timeout_ms, or when every message
        // of the batch is past its deadline (nobody waits for the result).
        const auto deadline = batch_deadline(batch);
        const auto timeout_at = spec_.timeout ? started + *spec_.timeout : Clock::time_point::max();
        if (std::min(deadline, timeout_at) != Clock::time_point::max()) {
          asio::steady_timer timer(co_await asio::this_coro::executor,
                                   std::min(deadline, timeout_at));
          auto winner = co_await (transform_->process_async(batch, results) ||
                                  timer.async_wait(use_awaitable));
          if (winner.index() == 1) {
            failure_code = errc::timed_out;
            if (timeout_at <= deadline) {
              failure = timeout_text(*spec_.timeout);
            } else {
              failure = "deadline passed while the step ran";
              expired_.add(batch.size());
            }
          }
        } else {
          co_await transform_->process_async(batch, results);
        }
      } else {
        co_await asio::co_spawn(
            pool_->get_executor(),
            [&]() -> asio::awaitable<void> {
              transform_->process(batch, results);
              co_return;
            },
            use_awaitable);
        if (spec_.timeout && Clock::now() - started > *spec_.timeout) {
          failure = timeout_text(*spec_.timeout);
          failure_code = errc::timed_out;
        }
      }
      const auto ns = elapsed_ns(started);
      busy_ns_.add(ns);
      busy_histogram_.observe(ns);
    } catch (const std::exception& e) {
      if (core_.cancelled()) throw;
      failure = e.what();
    }
    if (failure.empty()) {
      collect_outputs(batch, results, out);
      co_return;
    }
    if (can_retry) {
      retried_.add();
      batch = std::move(backup);
      continue;
    }
    fail_batch(batch, failure, out, failure_code);
    co_return;
  }
}

asio::awaitable<void> Processor::run_unit(std::vector<Message> batch, bool release_slot) {
  // Gives the concurrency slot back however the unit ends.
  struct SlotRelease {
    Processor* self;
    ~SlotRelease() {
      if (self) self->slots_->try_receive([](error_code) {});
    }
  } release{release_slot ? this : nullptr};
  Outbox out;
  try {
    co_await compute_async(batch, out);
    if (!try_send_all(out)) co_await send_all(out);
  } catch (...) {
    if (!core_.cancelled()) throw;
    cancel_held(out, batch);
  }
}

// --- zip -----------------------------------------------------------------------

bool Processor::zip_take(Packet& packet) {
  const std::uint64_t id = packet.msg.id;
  auto [it, inserted] = zip_.try_emplace(id);
  ZipEntry& entry = it->second;
  if (inserted) entry.parts.resize(inputs_);
  auto& part = entry.parts[packet.port];
  if (part) {
    entry.later.push_back(std::move(packet));
    return false;
  }
  part = std::move(packet);
  if (++entry.filled < inputs_) return false;

  // Every predecessor delivered this id: combine one message of each.
  bool dropped = false;
  std::int64_t parts_with_data = 0;
  Message combined;
  combined.id = id;
  combined.value = json::object();
  for (std::size_t port = 0; port < inputs_; ++port) {
    Packet& p = *entry.parts[port];
    if (p.kind != PacketKind::data) {
      dropped = true;
    } else {
      ++parts_with_data;
      combined.value[input_names_[port]] = std::move(p.msg.value);
      for (Blob& blob : p.msg.blobs)
        combined.blobs.push_back(std::move(blob));
      combined.priority = std::max(combined.priority, p.msg.priority);
      combined.deadline = std::min(combined.deadline, p.msg.deadline);
    }
    entry.parts[port].reset();
  }
  entry.filled = 0;
  // Later messages with this id start the next combination, in arrival order.
  for (auto later = entry.later.begin(); later != entry.later.end();) {
    auto& slot = entry.parts[later->port];
    if (slot) {
      ++later;
      continue;
    }
    slot = std::move(*later);
    ++entry.filled;
    later = entry.later.erase(later);
  }
  if (entry.filled == 0 && entry.later.empty()) zip_.erase(it);
  packet.port = 0;
  core_.track(id, (dropped ? 0 : 1) - parts_with_data);
  if (dropped) {
    packet = dropped_packet(id);
  } else {
    packet.kind = PacketKind::data;
    packet.msg = std::move(combined);
  }
  return true;
}

void Processor::flush_zip_leftovers(Outbox& out) {
  for (auto& [id, entry] : zip_) {
    std::int64_t data_parts = 0;
    std::string missing;
    for (std::size_t port = 0; port < inputs_; ++port) {
      const auto& part = entry.parts[port];
      if (part) {
        data_parts += part->kind == PacketKind::data;
      } else {
        missing += (missing.empty() ? "" : ", ") + input_names_[port];
      }
    }
    for (const Packet& p : entry.later)
      data_parts += p.kind == PacketKind::data;
    const bool any_data = data_parts > 0;
    // Ids already reported upstream (dropped parts) need no second record.
    if (any_data) {
      errors_.add();
      core_.output_error(spec_.id, id, "zip: no message with this id from " + missing);
      core_.track(id, -data_parts);
    }
    if (feeds_zip_) out.packets.push_back(dropped_packet(id));
  }
  zip_.clear();
}

// --- cancellation --------------------------------------------------------------

void Processor::cancel_held(Outbox& out, std::span<const Message> batch) {
  for (const Message& m : batch)
    core_.output_cancelled(spec_.id, m.id);
  for (std::size_t i = out.next_packet; i < out.packets.size(); ++i) {
    if (out.packets[i].kind == PacketKind::data) {
      core_.output_cancelled(spec_.id, out.packets[i].msg.id);
    }
  }
  out.clear();
}

void Processor::drain_input_cancelled() {
  Packet packet;
  while (try_take(packet)) {
    if (packet.kind == PacketKind::data) core_.output_cancelled(spec_.id, packet.msg.id);
  }
}

}  // namespace plumber::detail
