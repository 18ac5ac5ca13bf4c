#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include "plumber/error.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/processor.hpp"
#include "plumber/registry.hpp"
#include "runtime/inbox.hpp"
#include "runtime/packet.hpp"
#include "runtime/step_histogram.hpp"

namespace plumber::detail {

class PipelineCore;
class FeedQueue;
class WorkerPool;
struct FeedItem;

/// One node at run time: its input channel (bounded: the back pressure), its
/// join policy, its concurrency, its batching, its fan-out.
///
/// Everything here runs on the pipeline's strand, except a step's process()
/// when the node has `threads` (then it runs on the node's thread pool).
class Processor final : public SourceContext {
 public:
  Processor(PipelineCore& core, const NodeSpec& spec, const CoroutineInfo& info,
            const PredicateInfo* when);
  ~Processor() override;

  /// Sends this node's output to `successor`, arriving on its input `port`.
  void connect(Processor& successor, std::uint16_t port);
  /// Messages this node drops or fails must be announced downstream (a zip waits).
  void set_feeds_zip() noexcept { feeds_zip_ = true; }
  /// For sources fed from outside (the `input` node, blocking readers).
  void set_feed(std::shared_ptr<FeedQueue> feed) { feed_ = std::move(feed); }

  /// True when this node can run inline in its only predecessor's coroutine:
  /// a synchronous step on the strand, one input, no batching, no zip.
  bool fusible() const noexcept;
  /// Runs `successor` inline instead of through its channel (operator fusion):
  /// a chain of synchronous steps costs function calls, not channel hops.
  void fuse(Processor& successor);
  /// True when a predecessor runs this node: it has no coroutine of its own.
  bool fused_in() const noexcept { return fused_in_; }
  /// Whether this node may call a fused successor: it sends from one coroutine.
  bool may_fuse() const noexcept { return successors_.size() == 1 && (source_ || fast_path()); }

  /// Runs the step's on_start hook.
  void on_start();
  /// The processor's life: returns when its inputs have ended and it drained.
  asio::awaitable<void> run();

  const NodeSpec& spec() const noexcept { return spec_; }
  bool is_source() const noexcept { return source_ != nullptr; }
  const std::shared_ptr<Source>& source() const noexcept { return source_; }
  ProcessorStats stats() const;
  std::uint64_t emitted() const noexcept { return emitted_.get(); }

  // SourceContext
  using SourceContext::emit;
  asio::awaitable<void> emit(json value, std::uint8_t priority) override;
  bool stopping() const noexcept override;

 private:
  struct Successor {
    Processor* target;
    std::uint16_t port;
  };
  /// Packets waiting to be sent on, and how far the current one got.
  struct Outbox {
    std::vector<Packet> packets;
    std::size_t next_packet = 0;
    std::size_t next_successor = 0;
    void clear() {
      packets.clear();
      next_packet = next_successor = 0;
    }
  };
  struct ZipEntry {
    std::vector<std::optional<Packet>> parts;  // the first message of this id, per port
    std::vector<Packet> later;  // more messages with this id (a step emitting several)
    std::size_t filled = 0;     // parts present
  };

  asio::awaitable<void> run_source();
  asio::awaitable<void> run_feed_source();
  asio::awaitable<void> run_transform();
  std::optional<FeedItem> take_feed_item();
  bool accept_feed_item(FeedItem&& item, Outbox& out);

  // Receiving
  bool try_take(Packet& packet);
  bool zip_take(Packet& packet);
  void flush_zip_leftovers(Outbox& out);

  // Computing
  bool fast_path() const noexcept;
  bool accept_data(Packet& packet, Outbox& out);
  void handle_inline(Packet&& packet);
  void compute_sync(std::span<Message> batch, Outbox& out);
  asio::awaitable<void> compute_async(std::vector<Message>& batch, Outbox& out);
  asio::awaitable<void> dispatch_batch();
  asio::awaitable<void> run_unit(std::vector<Message> batch, bool release_slot);
  asio::awaitable<void> wait_units_idle();
  void arm_batch_timer();
  asio::awaitable<void> wait_batch_timer(std::uint64_t generation);
  void collect_outputs(std::span<const Message> batch, std::vector<Message>& results, Outbox& out);
  void fail_batch(std::span<const Message> batch, const std::string& error, Outbox& out,
                  errc code = errc::step_failed);

  // Sending
  bool try_send_all(Outbox& out);
  asio::awaitable<void> send_all(Outbox& out);
  asio::awaitable<void> send_end();

  // Cancellation
  void cancel_held(Outbox& out, std::span<const Message> batch);
  void drain_input_cancelled();

  PipelineCore& core_;
  NodeSpec spec_;
  std::string coroutine_;
  std::unique_ptr<Transform> transform_;
  std::shared_ptr<Source> source_;  // shared with a blocking reader thread
  const PredicateInfo* when_;
  std::shared_ptr<FeedQueue> feed_;

  std::optional<Inbox> input_;
  std::size_t inputs_ = 0;                // predecessor edges
  std::vector<std::string> input_names_;  // predecessor id by port
  std::size_t ends_seen_ = 0;
  std::vector<Successor> successors_;
  bool feeds_zip_ = false;
  Processor* fused_ = nullptr;  // the successor this node runs inline
  bool fused_in_ = false;
  bool is_zip_ = false;

  std::vector<Message> batch_;
  Outbox outbox_;  // the dispatcher's
  std::vector<Message> results_;
  std::unordered_map<std::uint64_t, ZipEntry> zip_;
  std::optional<asio::steady_timer> batch_timer_;
  std::uint64_t batch_generation_ = 0;
  std::optional<asio::thread_pool> pool_;
  std::unique_ptr<WorkerPool> workers_;  // `procs`: the step runs in worker processes
  /// Concurrency slots: a unit takes one by sending, gives it back by receiving.
  std::optional<asio::experimental::channel<void(error_code)>> slots_;

  Counter received_, emitted_, errors_, skipped_, expired_, retried_, batches_, busy_ns_, queued_;
  StepHistogram busy_histogram_;
};

}  // namespace plumber::detail
