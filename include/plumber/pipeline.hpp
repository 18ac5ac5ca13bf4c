#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "plumber/graph_spec.hpp"
#include "plumber/json.hpp"
#include "plumber/message.hpp"
#include "plumber/processor.hpp"

namespace plumber {

namespace detail {
class PipelineCore;
}

/// What comes out of a pipeline: a value a sink emitted, an error record, or
/// the notice that a message was cancelled.
struct OutputRecord {
  enum class Kind { value, error, cancelled };
  Kind kind = Kind::value;
  std::uint64_t id = 0;
  std::string_view node;  ///< valid while the Pipeline lives
  json value;             ///< the value (kind == value)
  std::vector<Blob> blobs;
  std::string error;  ///< what went wrong (kind == error or cancelled)
};

/// Called on the pipeline's strand for every output record, in the order produced.
using OutputHandler = std::function<void(OutputRecord&& record)>;

struct PipelineOptions {
  /// Measure the time spent inside each step (costs two clock reads per call).
  bool collect_timings = false;
  /// How long start() waits for the worker processes of a `procs` node to run
  /// their on_start (and a restarted worker to be ready again).
  std::chrono::milliseconds worker_start_timeout{10'000};
};

/// A running graph. Made by Plumber::build; runs on a strand of the executor it
/// was built with, so the io_context may have any number of threads.
class Pipeline {
 public:
  explicit Pipeline(std::shared_ptr<detail::PipelineCore> core);
  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;
  /// Cancels what still runs (as stop(false)) and waits for nothing: keep the
  /// executor running until done() if you need every record.
  ~Pipeline();

  /// Where outputs go; set it before start().
  void on_output(OutputHandler handler);
  /// Called once, on the strand, when every processor has finished.
  void on_done(std::function<void()> handler);

  /// Runs every step's on_start, then spawns the processors on the executor.
  /// Throws what an on_start throws, naming the node.
  void start();

  /// Feeds one value to the graph's `input` source. Blocks while its queue is
  /// full (back pressure). Call it from a thread that is not running the
  /// pipeline's executor; from a coroutine use async_feed. Throws UsageError when
  /// the graph has no `input` node, std::system_error(errc::input_closed) after
  /// end_input().
  void feed(json value);
  /// Coroutine form of feed: suspends while the queue is full.
  boost::asio::awaitable<void> async_feed(json value);
  /// No more input: the `input` source ends once what was fed has been emitted.
  void end_input();

  /// graceful: sources stop producing and the graph drains. Otherwise every
  /// message in flight is reported as cancelled. Thread-safe; returns at once.
  void stop(bool graceful = true);
  /// True once every processor has finished.
  bool done() const noexcept;
  /// Blocks until done(); call it from a thread that does not run the executor.
  void wait() const;

  /// Per-node counters, in topological order. Thread-safe.
  std::vector<ProcessorStats> stats() const;
  /// How many messages the sources will emit in all, when they all know.
  std::optional<std::uint64_t> expected_messages() const;
  /// How many messages the sources have emitted so far.
  std::uint64_t emitted_messages() const noexcept;
  const GraphSpec& graph() const noexcept;

 private:
  std::shared_ptr<detail::PipelineCore> core_;
};

}  // namespace plumber
