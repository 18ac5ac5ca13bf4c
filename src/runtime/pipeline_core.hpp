#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/steady_timer.hpp>

#include "plumber/error.hpp"
#include "plumber/pipeline.hpp"
#include "runtime/output_stream.hpp"
#include "runtime/packet.hpp"
#include "runtime/processor.hpp"
#include "runtime/rate_window.hpp"
#include "runtime/step_watch.hpp"
#include "runtime/tracer.hpp"

namespace plumber::detail {

/// One Pipeline::async_process call, from its start to its completion. The
/// message it sent holds `tokens`: one per copy of it (or of a message derived
/// from it) still in the graph. The request completes when they are all gone, or
/// at the first error, timeout or cancellation; it is forgotten when they are
/// all gone (a cancelled request's copies are dropped by the next node that
/// takes them).
struct Request {
  // Constructed with its handler, never assigned one: Boost 1.81's
  // any_completion_handler move assignment wraps the handler in itself forever.
  Request(const Strand& strand, asio::any_completion_handler<ProcessSignature> completion)
      : handler(std::move(completion)), timer(strand) {}
  asio::any_completion_handler<ProcessSignature> handler;
  asio::steady_timer timer;
  ProcessResult result;
  std::int64_t tokens = 0;
  std::uint64_t id = 0;  ///< 0 until the input source emits it
  bool finished = false;
  bool cancelled = false;  ///< by its caller: what is left of it is dropped
  std::uint8_t priority = 0;
  Clock::time_point deadline = Clock::time_point::max();
  /// The node that last took the message (for a timeout's error).
  std::string where;
};

/// One value entering the graph from another thread: a value to emit, a batch
/// of them, an error to report, or the end of the stream.
struct FeedItem {
  std::optional<json> value;
  /// A string, or null. Not std::string: g++ 12 relocates a co_await result
  /// bitwise, which breaks a short string's inline buffer (json keeps its
  /// strings on the heap).
  json error;
  bool end = false;
  std::shared_ptr<Request> request;  ///< set for a Pipeline::process call
  std::vector<json> batch;           ///< Pipeline::feed_batch: emitted in order, after `value`
  std::vector<Blob> blobs;           ///< value's
};

/// Values that enter the graph from another thread: what the host feeds the
/// `input` source, or what a blocking reader (stdin) produces.
class FeedQueue {
 public:
  using Channel = asio::experimental::concurrent_channel<void(error_code, FeedItem)>;
  FeedQueue(const asio::any_io_executor& executor, const NodeSpec& node)
      : channel(executor, node.queue_size), node_id(node.id) {}
  Channel channel;
  std::string node_id;  ///< the source node it feeds, for cancellation records
  std::atomic<bool> ended{false};

  /// Batches fed and not yet emitted are at most this many: a reader ahead of
  /// a slow graph holds a few batches, never its whole input.
  static constexpr std::size_t kMaxBatches = 4;
  enum class BatchSent { sent, no_room, refused };
  /// Waits until fewer than kMaxBatches are in flight, counts one more and
  /// sends `item` if the channel has room (no_room: send it with async_send).
  /// Under the lock refuse_more takes: a batch is either refused or in the
  /// channel before cancel_all drains it, never dropped by close().
  BatchSent send_batch(FeedItem& item);
  /// A batch was emitted (or refused): room for another.
  void release_batch();
  /// Sets `ended` and wakes whoever waits in send_batch; returns what
  /// `ended` was before.
  bool refuse_more();

 private:
  std::mutex batch_mutex_;
  std::condition_variable batch_room_;
  std::size_t batches_ = 0;
};

/// Sends the end of `feed` from a coroutine on `strand` (never blocks the caller).
void send_feed_end(const std::shared_ptr<FeedQueue>& feed, const Strand& strand);

/// How a blocking reader thread reaches its feed: cleared (under the mutex)
/// when the pipeline goes away, so the thread never touches a dead channel.
struct ReaderLink {
  std::mutex mutex;
  FeedQueue* feed = nullptr;
};

/// The state a Pipeline shares with its processors and spawned coroutines.
class PipelineCore : public std::enable_shared_from_this<PipelineCore> {
 public:
  PipelineCore(GraphSpec graph, const asio::any_io_executor& executor, PipelineOptions options);
  ~PipelineCore();

  const GraphSpec& graph() const noexcept { return graph_; }
  const PipelineOptions& options() const noexcept { return options_; }
  const Strand& strand() const noexcept { return strand_; }
  /// Null unless the run is traced (PipelineOptions::trace).
  Tracer* tracer() const noexcept { return tracer_.get(); }
  /// The in-process step invocations under way; null unless options().watch_steps.
  StepWatch* step_watch() const noexcept { return step_watch_.get(); }

  // --- strand only -----------------------------------------------------------
  std::uint64_t next_id() noexcept { return ++last_id_; }
  bool sources_stopping() const noexcept { return sources_stopping_; }
  bool cancelled() const noexcept { return cancelled_; }
  /// Spawns a coroutine that stop(false) cancels and that done() waits for.
  void spawn(asio::awaitable<void> task);
  /// A sink's value leaves the pipeline: to a process() request, the output
  /// handler, or the output stream. False (message untouched) when the stream
  /// is full: wait_output_room, then try again.
  bool try_output_value(std::string_view node, Message& message);
  /// True when the output stream is full (a source waits before it goes on).
  bool output_full() const noexcept { return output_stream_ && output_stream_->full(); }
  /// Suspends until the output stream has room; throws when cancelled.
  asio::awaitable<void> wait_output_room();
  void output_error(std::string_view node, std::uint64_t id, std::string error,
                    errc code = errc::step_failed);
  /// Reports a cancelled message once, however many branches held it.
  void output_cancelled(std::string_view node, std::uint64_t id);

  // --- request/response accounting (strand only) -------------------------------
  /// The input source emits the message of `request` with this id.
  void admit_request(std::uint64_t id, const std::shared_ptr<Request>& request);
  /// Messages with `id` in the graph grew or shrank by `delta` (fan-out, a step
  /// emitting several or none, a zip combining parts, a sink's output).
  void track(std::uint64_t id, std::int64_t delta) {
    if (!requests_.empty()) track_request(id, delta);
  }
  bool tracking() const noexcept { return !requests_.empty(); }
  /// A node took the message with `id` (tracking() only). False when it belongs
  /// to a cancelled request: the node drops it.
  bool note_position(std::uint64_t id, std::string_view node);
  /// Completes `request` once (later calls do nothing): with its result, or
  /// with `error`, the node where it happened and what went wrong.
  void finish(Request& request, error_code error = {}, std::string node = {},
              std::string what = {});
  /// The caller cancelled `request`: it completes with operation_aborted now.
  void cancel_request(Request& request);
  /// Starts the timeout of a request and sends it to the input feed.
  void start_request(std::shared_ptr<Request> request, json value, std::vector<Blob> blobs);

  // --- any thread ------------------------------------------------------------
  void start();
  bool started() const noexcept { return started_.load(); }
  void stream_outputs(OutputStreamOptions options);
  void receive_output(OutputStream::Handler handler);
  std::uint64_t dropped_outputs() const noexcept {
    return output_stream_ ? output_stream_->dropped() : 0;
  }
  void stop(bool graceful);
  bool done() const noexcept { return done_flag_.load(std::memory_order_acquire); }
  void wait() const;

  /// What the nodes' coroutines and predicates resolved to, kept alive here.
  std::vector<std::shared_ptr<const CoroutineInfo>> resolved;
  std::vector<std::shared_ptr<const PredicateInfo>> resolved_predicates;
  std::vector<std::unique_ptr<Processor>> processors;  // indexed like graph().nodes
  std::shared_ptr<FeedQueue> input_feed;               // when the graph has an `input` node
  std::vector<std::shared_ptr<FeedQueue>> feeds;       // every feed, input_feed included
  OutputHandler output_handler;
  std::function<void()> done_handler;
  RateWindow rates;  ///< the nodes' rates, for Pipeline::stats()

 private:
  void task_finished();
  void track_request(std::uint64_t id, std::int64_t delta);
  void cancel_all();
  void end_feeds();
  void start_blocking_readers();
  void deliver(OutputRecord&& record);

  GraphSpec graph_;
  PipelineOptions options_;
  Strand strand_;
  std::unique_ptr<Tracer> tracer_;
  std::unique_ptr<StepWatch> step_watch_;
  std::uint64_t last_id_ = 0;
  bool sources_stopping_ = false;
  bool cancelled_ = false;
  std::atomic<bool> started_{false};
  std::optional<OutputStream> output_stream_;
  std::list<asio::cancellation_signal> signals_;
  std::size_t live_tasks_ = 0;
  std::unordered_set<std::uint64_t> cancelled_ids_;
  std::unordered_map<std::uint64_t, std::shared_ptr<Request>> requests_;
  std::vector<std::shared_ptr<ReaderLink>> reader_links_;

  mutable std::mutex done_mutex_;
  mutable std::condition_variable done_cv_;
  std::atomic<bool> done_flag_{false};
};

}  // namespace plumber::detail
