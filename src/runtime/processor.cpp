#include "runtime/processor.hpp"

#include <utility>

#include "runtime/pipeline_core.hpp"
#include "runtime/transform_processor.hpp"

namespace plumber::detail {

Processor::Processor(PipelineCore& core, const NodeSpec& spec, const CoroutineInfo& info)
    : core_(core), spec_(spec), info_(info) {}

Processor::~Processor() = default;

void Processor::connect(Processor& successor, std::uint16_t port) {
  successors_.push_back({successor.input(), port});
  successor.add_predecessor(port, spec_.id);
}

void Processor::fuse(TransformProcessor& successor) {
  fused_ = &successor;
  successor.fused_in_ = true;
}

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
    if (fused_) {
      // The successor runs inline, once its own outputs have left.
      if (!fused_->flush_outbox()) return false;
      if (packet.kind == PacketKind::data) counters_.emitted.add();
      fused_->handle_inline(std::move(packet));
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
      Packet copy;
      Packet& sent = last ? packet : (copy = packet);
      sent.port = to.index;
      if (!to.port->try_send(sent)) return false;
      if (!last && packet.kind == PacketKind::data) core_.track(packet.msg.id, +1);
    }
    if (packet.kind == PacketKind::data) counters_.emitted.add();
  }
  out.clear();
  return !fused_ || fused_->flush_outbox();
}

asio::awaitable<void> Processor::send_all(Outbox& out) {
  while (!try_send_all(out)) {
    if (fused_) {
      // Blocked beyond the fused successor (maybe several fused nodes down):
      // it sends what it holds, and so on down the chain.
      co_await fused_->send_outbox();
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
