#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "plumber/graph_spec.hpp"
#include "plumber/processor.hpp"
#include "plumber/registry.hpp"
#include "runtime/input_port.hpp"
#include "runtime/packet.hpp"
#include "runtime/step_histogram.hpp"

namespace plumber::detail {

class PipelineCore;
class TransformProcessor;

/// Packets waiting to be sent on, and how far the current one got.
struct Outbox {
  std::vector<Packet> packets;
  std::size_t next_packet = 0;
  std::size_t next_successor = 0;
  /// Checked on every fused hop: packets.empty() answers first, for an
  /// outbox that is usually cleared, without dividing by sizeof(Packet).
  bool empty() const noexcept { return packets.empty() || next_packet >= packets.size(); }
  void clear() {
    packets.clear();
    next_packet = next_successor = 0;
  }
};

/// A node's counters: written on the strand, read by stats() from any thread.
struct NodeCounters {
  Counter received, emitted, errors, skipped, expired, cancelled, retried, batches, busy_ns;
  StepHistogram busy_buckets;  ///< calls by time inside the step, beside busy_ns
  /// Calls of more than one message. The hot path (one message a call) counts
  /// only `batches`: stats() puts the rest in the bucket "1".
  BatchHistogram larger_batches;
};

/// One node at run time. This base is what every role shares: where its
/// messages go (fan-out to successors' input ports, a fused successor run
/// inline, or the pipeline's output for a sink), its counters, and the
/// cancellation of what it holds. The roles: SourceProcessor (sources, and the
/// host-fed `input`) and TransformProcessor (transforms and sinks, with their
/// ZipJoiner, Batcher and StepRunner).
///
/// Everything runs on the pipeline's strand.
class Processor {
 public:
  Processor(PipelineCore& core, const NodeSpec& spec, const CoroutineInfo& info);
  virtual ~Processor();
  Processor(const Processor&) = delete;
  Processor& operator=(const Processor&) = delete;

  const NodeSpec& spec() const noexcept { return spec_; }
  const CoroutineInfo& info() const noexcept { return info_; }

  /// Where predecessors send; null for a source.
  virtual InputPort* input() noexcept { return nullptr; }
  /// Told by connect(): predecessor `name` sends through `port`.
  virtual void add_predecessor(std::uint16_t /*port*/, const std::string& /*name*/) {}
  /// Sends this node's output to `successor`, arriving on its input `port`.
  void connect(Processor& successor, std::uint16_t port);
  /// Messages this node drops or fails must be announced downstream (a zip waits).
  void set_feeds_zip() noexcept { feeds_zip_ = true; }

  /// Whether this node may call fused successors: it sends from one coroutine.
  virtual bool may_fuse() const noexcept = 0;
  /// Runs `successor` inline instead of through its input port (operator
  /// fusion): a chain, a fan-out or a diamond of synchronous steps costs
  /// function calls, not channel hops. Call after connect().
  void fuse(TransformProcessor& successor);
  /// True when a predecessor runs this node: it has no coroutine of its own.
  bool fused_in() const noexcept { return fused_in_; }
  /// Cancellation: reports what the node holds beyond its outbox (a fused
  /// node has no coroutine that would).
  virtual void cancel_held_parts() {}

  /// Start, first phase: what takes long and can overlap with the other nodes
  /// (worker processes are spawned). Called for every node before any on_start.
  virtual void launch() {}
  /// Start, second phase: waits for what launch() began, runs on_start hooks.
  virtual void on_start() = 0;
  /// The node's life: returns when its inputs ended and it drained.
  virtual asio::awaitable<void> run() = 0;

  virtual ProcessorStats stats() const;
  std::uint64_t emitted() const noexcept { return counters_.emitted.get(); }

  // --- the fused successor's side (its predecessor drives it) ----------------
  /// Nothing waits in this node's outbox, nor further down its fused successors.
  bool idle() const noexcept { return outbox_.empty() && !blocked_; }
  /// Sends what this node's outbox holds without suspending; false when blocked.
  bool flush_outbox() { return idle() || try_send_all(outbox_); }
  /// Sends what this node, and the fused nodes after it, hold; suspends while blocked.
  asio::awaitable<void> send_outbox() { return send_all(outbox_); }

 protected:
  struct Successor {
    InputPort* port;
    std::uint16_t index;                  ///< the port number on the successor
    TransformProcessor* fused = nullptr;  ///< run inline instead of through `port`
    /// May take a message by a direct call when it is idle (a worker node):
    /// TransformProcessor::try_take_now.
    TransformProcessor* direct = nullptr;
  };

  /// Sends what `out` holds without suspending; false when a successor (or the
  /// pipeline's output) is full: then call send_all.
  bool try_send_all(Outbox& out);
  /// Sends a data packet on with no outbox; call only when idle() (nothing
  /// waits before it). False, the packet untouched, when no successor could
  /// take it: then it goes through the outbox. When only some could, the
  /// rest waits in the outbox (send it with try_send_all / send_all).
  bool try_pass_on(Packet& packet);
  /// Sends what `out` holds, suspending while a successor is full.
  asio::awaitable<void> send_all(Outbox& out);
  asio::awaitable<void> send_end();
  /// Reports what `out` still holds, and `batch`, as cancelled.
  void cancel_held(Outbox& out, std::span<const Message> batch);
  static Packet dropped_packet(std::uint64_t id);

  PipelineCore& core_;
  NodeSpec spec_;
  const CoroutineInfo& info_;
  std::vector<Successor> successors_;
  std::vector<TransformProcessor*> fused_;  // the successors this node runs inline
  /// The one successor, when it is fused: a link of a chain (try_pass_on's fast case).
  TransformProcessor* chain_next_ = nullptr;
  bool feeds_zip_ = false;
  bool fused_in_ = false;
  /// The last try_send_all could not send everything (maybe only further down
  /// the fused chain, with this node's outbox empty).
  bool blocked_ = false;
  Outbox outbox_;  // the node's main coroutine's (and a fused node's)
  NodeCounters counters_;

 private:
  bool try_deliver(Packet& packet);
  bool try_send_all_now(Outbox& out);
  bool flush_fused();
  /// The fused successor that stopped the last try_send_all, if one did.
  TransformProcessor* blocked_fused(const Outbox& out) const noexcept;
};

}  // namespace plumber::detail
