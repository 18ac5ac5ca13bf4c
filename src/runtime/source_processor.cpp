#include "runtime/source_processor.hpp"

#include <exception>
#include <tuple>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "runtime/pipeline_core.hpp"

namespace plumber::detail {

using asio::use_awaitable;

namespace {
/// A source whose successors never fill (a fused chain) would otherwise hold
/// the strand until it ends: it lets stop() and timers in this often.
constexpr std::uint64_t kYieldEvery = 512;
}  // namespace

SourceProcessor::SourceProcessor(PipelineCore& core, const NodeSpec& spec,
                                 const CoroutineInfo& info)
    : Processor(core, spec, info), source_(info.make_source(spec_.params)) {}

SourceProcessor::~SourceProcessor() = default;

void SourceProcessor::set_feed(std::shared_ptr<FeedQueue> feed) {
  feed_ = std::move(feed);
}

bool SourceProcessor::stopping() const noexcept {
  return core_.sources_stopping() || core_.cancelled();
}

ProcessorStats SourceProcessor::stats() const {
  ProcessorStats s = Processor::stats();
  s.received = s.emitted;
  return s;
}

asio::awaitable<void> SourceProcessor::emit(json value, std::uint8_t priority) {
  Packet packet{
      PacketKind::data, 0,
      Message{.id = core_.next_id(), .value = std::move(value), .blobs = {}, .priority = priority}};
  if (idle() && try_pass_on(packet)) {
    // Passed on without an outbox; what some successor could not take yet,
    // or what a fused one holds, waits in this node's outbox.
    if (!idle()) co_await send_all(outbox_);
    co_return;
  }
  // Each emit has its own outbox: an awaitable source may emit from several
  // coroutines at once, and one may wait here while another emits.
  Outbox out;
  out.packets.push_back(std::move(packet));
  if (!try_send_all(out)) co_await send_all(out);
}

asio::awaitable<void> SourceProcessor::run() {
  if (feed_) {
    co_await run_fed();
  } else if (source_->is_async()) {
    try {
      co_await source_->run(*this);
    } catch (const std::exception& e) {
      if (core_.cancelled()) throw;
      counters_.errors.add();
      core_.output_error(spec_.id, core_.next_id(), e.what());
    }
  } else {
    co_await run_generator();
  }
  co_await send_end();
}

asio::awaitable<void> SourceProcessor::run_generator() {
  for (;;) {
    switch (pump_generator()) {
      case Pumped::ended:
        co_return;
      case Pumped::yield:
        co_await asio::post(core_.strand(), use_awaitable);
        break;
      case Pumped::blocked:
        co_await send_all(outbox_);
        break;
      case Pumped::output_full:
        // An error record waits for room like a value would: memory stays bounded.
        co_await core_.wait_output_room();
        break;
    }
  }
}

// A plain function, not part of the coroutine: its locals stay in registers
// (a coroutine keeps every local whose scope spans a co_await in its frame).
SourceProcessor::Pumped SourceProcessor::pump_generator() {
  for (std::uint64_t pulled = 0; pulled < kYieldEvery; ++pulled) {
    if (stopping()) return Pumped::ended;
    std::optional<json> value;
    std::vector<Blob> blobs;
    try {
      StepWatch::Scope watched(core_.step_watch(), spec_.id, true);
      value = source_->next();
      if (!value) return Pumped::ended;
      blobs = source_->take_blobs();
    } catch (const SourceItemError& e) {  // one bad item: the source goes on
      counters_.errors.add();
      core_.output_error(spec_.id, core_.next_id(), e.what());
      if (core_.output_full()) return Pumped::output_full;
      continue;
    } catch (const std::exception& e) {
      counters_.errors.add();
      core_.output_error(spec_.id, core_.next_id(), e.what());
      return Pumped::ended;
    }
    // Built in place: assigning a json would construct and destroy a temporary.
    Packet packet{
        PacketKind::data, 0,
        Message{.id = core_.next_id(), .value = std::move(*value), .blobs = std::move(blobs)}};
    if (!idle() || !try_pass_on(packet)) outbox_.packets.push_back(std::move(packet));
    if (!outbox_.empty() && !try_send_all(outbox_)) return Pumped::blocked;
  }
  return Pumped::yield;
}

asio::awaitable<void> SourceProcessor::run_fed() {
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
    const bool had_error = item && item->error.is_string();
    const bool had_batch = item && !item->batch.empty();
    open = item && accept_feed_item(std::move(*item), out);
    if (!out.empty() && !try_send_all(out)) co_await send_all(out);
    // An error record waits for room like a value would: memory stays bounded.
    if (had_error && core_.output_full()) co_await core_.wait_output_room();
    if (had_batch) {
      feed_->release_batch();
      // A reader ahead of a fused chain would otherwise hold the strand for
      // ever: let stop() and timers in between batches.
      co_await asio::post(core_.strand(), use_awaitable);
    }
  }
  refuse_leftover_feed();
}

void SourceProcessor::refuse_leftover_feed() {
  // Anything fed after the end (or after stop) is refused, never left unread:
  // close() alone would drop what is buffered.
  feed_->refuse_more();
  for (std::optional<FeedItem> left = take_feed_item(); left; left = take_feed_item()) {
    if (left->request) {
      core_.finish(*left->request, errc::pipeline_stopped, spec_.id,
                   "input ended before this request");
    } else if (left->value) {
      core_.output_cancelled(spec_.id, core_.next_id());
    }
    for (std::size_t i = 0; i < left->batch.size(); ++i)
      core_.output_cancelled(spec_.id, core_.next_id());
  }
  feed_->channel.close();
}

std::optional<FeedItem> SourceProcessor::take_feed_item() {
  std::optional<FeedItem> item;
  feed_->channel.try_receive([&](error_code, FeedItem i) { item = std::move(i); });
  return item;
}

bool SourceProcessor::accept_feed_item(FeedItem&& item, Outbox& out) {
  if (item.error.is_string()) {
    counters_.errors.add();
    core_.output_error(spec_.id, core_.next_id(), item.error.get<std::string>());
  }
  if (item.value) {
    // A request that timed out while queued was answered already: it never enters.
    if (item.request && item.request->finished) return !item.end;
    Packet packet;
    packet.msg.id = core_.next_id();
    packet.msg.value = std::move(*item.value);
    packet.msg.blobs = std::move(item.blobs);
    if (item.request) {
      packet.msg.priority = item.request->priority;
      packet.msg.deadline = item.request->deadline;
      core_.admit_request(packet.msg.id, item.request);
    }
    out.packets.push_back(std::move(packet));
  }
  for (json& value : item.batch) {
    Packet packet;
    packet.msg.id = core_.next_id();
    packet.msg.value = std::move(value);
    out.packets.push_back(std::move(packet));
  }
  return !item.end;
}

}  // namespace plumber::detail
