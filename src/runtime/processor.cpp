#include "runtime/processor.hpp"

#include <utility>

#include "runtime/pipeline_core.hpp"
#include "runtime/transform_processor.hpp"

namespace plumber::detail {

Processor::Processor(PipelineCore& core, const NodeSpec& spec, const CoroutineInfo& info)
    : core_(core), spec_(spec), info_(info) {}

Processor::~Processor() = default;

void Processor::connect(Processor& successor, std::uint16_t port) {
  auto* transform = dynamic_cast<TransformProcessor*>(&successor);
  successors_.push_back({successor.input(), port, nullptr,
                         transform && transform->takes_direct_calls() ? transform : nullptr});
  successor.add_predecessor(port, spec_.id);
}

void Processor::fuse(TransformProcessor& successor) {
  for (Successor& to : successors_) {
    if (to.port == successor.input()) to.fused = &successor;
  }
  fused_.push_back(&successor);
  successor.fused_in_ = true;
  chain_next_ = successors_.size() == 1 ? successors_.front().fused : nullptr;
}

namespace {

// The last successor gets `packet` itself, by reference (not `cond ? move : copy`,
// which would move it into a temporary); the others a copy.
void hand_over(TransformProcessor& successor, Packet& packet, bool last, std::uint16_t port) {
  if (last) {
    successor.handle_inline(std::move(packet), port);
  } else {
    successor.handle_inline(Packet(packet), port);
  }
}

}  // namespace

Packet Processor::dropped_packet(std::uint64_t id) {
  Packet packet;
  packet.kind = PacketKind::dropped;
  packet.msg.id = id;
  return packet;
}

ProcessorStats Processor::stats() const {
  ProcessorStats s;
  s.node = spec_.id;
  s.coroutine = spec_.coroutine;
  s.received = counters_.received.get();
  s.emitted = counters_.emitted.get();
  s.errors = counters_.errors.get();
  s.skipped = counters_.skipped.get();
  s.expired = counters_.expired.get();
  s.cancelled = counters_.cancelled.get();
  s.retried = counters_.retried.get();
  s.batches = counters_.batches.get();
  s.busy_ns = counters_.busy_ns.get();
  s.busy_buckets = counters_.busy_buckets.get();
  s.batch_sizes = counters_.larger_batches.get();
  const std::uint64_t larger = counters_.larger_batches.observed();
  if (s.batches > larger) s.batch_sizes[0] = s.batches - larger;
  s.batched = s.batch_sizes[0] + counters_.larger_batches.messages();
  s.fused = fused_in_;
  return s;
}

// A sink's packet leaves the pipeline: false when the output stream is full.
bool Processor::try_deliver(Packet& packet) {
  if (packet.kind != PacketKind::data) return true;
  if (!core_.try_output_value(spec_.id, packet.msg)) return false;
  counters_.emitted.add();
  return true;
}

bool Processor::try_send_all(Outbox& out) {
  blocked_ = !try_send_all_now(out);
  return !blocked_;
}

bool Processor::try_send_all_now(Outbox& out) {
  const bool cancelled = core_.cancelled();
  for (; out.next_packet < out.packets.size(); ++out.next_packet, out.next_successor = 0) {
    Packet& packet = out.packets[out.next_packet];
    if (cancelled) {
      if (packet.kind == PacketKind::data) core_.output_cancelled(spec_.id, packet.msg.id);
      continue;
    }
    if (successors_.empty()) {  // a sink: what it emits is the pipeline's output
      if (!try_deliver(packet)) return false;
      continue;
    }
    for (; out.next_successor < successors_.size(); ++out.next_successor) {
      const Successor& to = successors_[out.next_successor];
      const bool last = out.next_successor + 1 == successors_.size();
      // Fan-out copies the value and shares the blobs; the last successor gets
      // the original. try_send leaves its argument untouched when it fails.
      const bool copy_of_data = !last && packet.kind == PacketKind::data;
      if (to.fused) {
        // The successor runs inline, once its own outputs have left. The copy
        // is counted before the successor can count its input consumed.
        if (!to.fused->flush_outbox()) return false;
        if (copy_of_data) core_.track(packet.msg.id, +1);
        hand_over(*to.fused, packet, last, to.index);
        continue;
      }
      Packet copy;
      Packet& sent = last ? packet : (copy = packet);
      sent.port = to.index;
      const bool taken = last && to.direct && to.direct->try_take_now(sent);
      if (!taken && !to.port->try_send(sent)) return false;
      if (copy_of_data) core_.track(packet.msg.id, +1);
    }
    if (packet.kind == PacketKind::data) counters_.emitted.add();
  }
  out.clear();
  return flush_fused();
}

bool Processor::try_pass_on(Packet& packet) {
  if (core_.cancelled()) return false;
  if (chain_next_) {  // the loop below, for one fused successor
    if (!chain_next_->idle()) return false;
    chain_next_->handle_inline(std::move(packet), successors_.front().index);
    if (!chain_next_->flush_outbox()) blocked_ = true;
    counters_.emitted.add();
    return true;
  }
  if (successors_.empty()) return try_deliver(packet);
  const std::size_t count = successors_.size();
  std::size_t next = 0;
  for (; next < count; ++next) {
    const Successor& to = successors_[next];
    const bool last = next + 1 == count;
    if (to.fused) {
      if (!to.fused->idle()) break;
      if (last) {  // by reference, not `last ? move : copy` (a moved temporary)
        to.fused->handle_inline(std::move(packet), to.index);
      } else {
        // The copy is counted before the successor can count its input consumed.
        core_.track(packet.msg.id, +1);
        to.fused->handle_inline(Packet(packet), to.index);
      }
      // What the successor made leaves now. Blocked further down: this node
      // must not pass on until what waits there has left (see idle()).
      if (!to.fused->flush_outbox()) blocked_ = true;
    } else if (last) {
      packet.port = to.index;
      if (!(to.direct && to.direct->try_take_now(packet)) && !to.port->try_send(packet)) break;
    } else {
      Packet copy = packet;
      copy.port = to.index;
      if (!to.port->try_send(copy)) break;
      core_.track(packet.msg.id, +1);
    }
  }
  if (next == 0) return false;
  if (next < count) {
    // Partly sent: the rest waits in the outbox (empty: the node was idle),
    // from the successor that could not take it.
    outbox_.packets.push_back(std::move(packet));
    outbox_.next_successor = next;
    return true;
  }
  counters_.emitted.add();
  return true;
}

bool Processor::flush_fused() {
  for (TransformProcessor* successor : fused_) {
    if (!successor->flush_outbox()) return false;
  }
  return true;
}

TransformProcessor* Processor::blocked_fused(const Outbox& out) const noexcept {
  if (!out.empty()) {
    return successors_.empty() ? nullptr : successors_[out.next_successor].fused;
  }
  for (TransformProcessor* successor : fused_) {
    if (!successor->idle()) return successor;
  }
  return nullptr;
}

asio::awaitable<void> Processor::send_all(Outbox& out) {
  while (!try_send_all(out)) {
    if (TransformProcessor* below = blocked_fused(out)) {
      // Blocked beyond a fused successor (maybe several fused nodes down): it
      // sends what it holds, and so on down the chain.
      try {
        co_await below->send_outbox();
      } catch (...) {
        cancel_held(out, {});  // what waited here for the fused successor
        throw;
      }
      continue;
    }
    Packet& packet = out.packets[out.next_packet];
    const bool is_data = packet.kind == PacketKind::data;
    const std::uint64_t id = packet.msg.id;
    try {
      if (successors_.empty()) {
        co_await core_.wait_output_room();  // the consumer of the outputs is behind
        continue;
      }
      const Successor& to = successors_[out.next_successor];
      const bool last = out.next_successor + 1 == successors_.size();
      Packet sent = last ? std::move(packet) : packet;
      sent.port = to.index;
      if (!last && is_data) core_.track(id, +1);  // the copy exists from now on
      co_await to.port->async_send(std::move(sent));
    } catch (...) {
      // Cancelled while waiting for room: this and every later packet is lost.
      if (is_data) core_.output_cancelled(spec_.id, id);
      ++out.next_packet;
      out.next_successor = 0;
      cancel_held(out, {});
      throw;
    }
    if (++out.next_successor == successors_.size()) {
      if (is_data) counters_.emitted.add();
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

}  // namespace plumber::detail
