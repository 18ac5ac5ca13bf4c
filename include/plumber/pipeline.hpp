#pragma once
// Deliberately light: of Asio, what a template async operation needs
// (async_result, any_completion_handler) and the executor type, which costs
// little more; awaitable is only declared. See docs/embedding.md, "Header cost".
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/system/error_code.hpp>

#include "plumber/asio_fwd.hpp"
#include "plumber/error.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/message.hpp"
#include "plumber/processor.hpp"

namespace plumber {

class Plumber;
namespace detail {
class PipelineCore;
}

/// What comes out of a pipeline: a value a sink emitted, an error record, or
/// the notice that a message was cancelled. It owns everything it holds: keep
/// it as long as you like, the pipeline may be gone.
struct OutputRecord {
  enum class Kind { value, error, cancelled };
  Kind kind = Kind::value;
  std::uint64_t id = 0;
  std::string node;  ///< the node that emitted it (the sink) or where it failed
  json value;        ///< the value (kind == value)
  std::vector<Blob> blobs;
  std::string error;  ///< what went wrong (kind == error or cancelled)
};

/// Called on the pipeline's strand for every output record, in the order produced.
using OutputHandler = std::function<void(OutputRecord&& record)>;

/// What the output stream does with a value when its consumer is behind.
enum class OutputOverflow {
  block,  // the sinks wait for the consumer: the graph holds still (back pressure)
  drop    // the value is dropped and counted (error and cancellation records are kept)
};

/// The pipeline's outputs as a bounded stream (Pipeline::stream_outputs).
struct OutputStreamOptions {
  std::size_t capacity = 1024;  ///< records held for the consumer
  OutputOverflow overflow = OutputOverflow::block;
};

/// Completion signature of Pipeline::async_receive_output: a record, or
/// boost::asio::error::eof once the pipeline is done and every record was taken.
using OutputSignature = void(boost::system::error_code, OutputRecord);

/// What one request sent with Pipeline::async_process (or process) came to.
struct ProcessResult {
  std::vector<OutputRecord> outputs;  ///< value records, in the order the sinks emitted them
  /// On failure, the node that failed (errc::step_failed) or last held the
  /// message (errc::timed_out, a cancellation); empty when it had not entered
  /// the graph.
  std::string node;
  /// On failure, what went wrong, for a person (the error_code says what for code).
  std::string error;
  /// The one value emitted; an array of them when there were several; null when
  /// none (every branch filtered it out, or the sinks emit nothing, like `print`).
  json value() const;
};

/// Why Pipeline::process failed (the coroutine form; async_process reports the
/// same as an error_code and ProcessResult::node/error). code() is
/// errc::timed_out, errc::step_failed, errc::cancelled (stop(false)),
/// errc::pipeline_stopped, errc::not_started, or
/// boost::asio::error::operation_aborted when the caller cancelled the request.
class ProcessError : public std::system_error {
 public:
  ProcessError(std::error_code code, std::string node, std::string what);
  /// The node that failed or held the message; empty when it had not entered the graph.
  const std::string& node() const noexcept { return node_; }
  /// What went wrong, as ProcessResult::error says it (without the code's message).
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  std::string node_;
  std::string what_;
};

/// How one request travels: for Pipeline::process and Pipeline::async_process.
struct ProcessOptions {
  /// From the call until the result: past it the caller gets errc::timed_out and
  /// the message is dropped wherever it is in the graph (an async step running it
  /// is interrupted; a step that dequeues it skips it).
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};
  /// 0 is the lowest lane; clamped to `settings.priorities - 1`.
  std::uint8_t priority = 0;
};

/// Completion signature of Pipeline::async_process: an error_code (errc, or
/// boost::asio::error::operation_aborted when the caller cancelled) and the result.
using ProcessSignature = void(boost::system::error_code, ProcessResult);

/// A Chrome trace of a run (PipelineOptions::trace, Pipeline::write_trace).
struct TraceOptions {
  /// Off by default: then each call of a step pays one predictable branch.
  bool enabled = false;
  /// Messages with ids 1, 1 + n, 1 + 2n ... get flow arrows from node to node.
  std::uint64_t sample_every = 16;
  /// Events kept at most (spans and flow ends); later ones are counted, not kept.
  std::size_t max_events = 1'000'000;
};

struct PipelineOptions {
  /// Measure the time spent inside each step (costs two clock reads per call).
  bool collect_timings = false;
  /// How long start() waits for the worker processes of a `procs` node to run
  /// their on_start (and a restarted worker to be ready again), and for a
  /// `remote` node's broker to answer and one of its workers to be ready.
  std::chrono::milliseconds worker_start_timeout{10'000};
  /// Record a trace of the run: a span per step call, per worker batch, flows.
  TraceOptions trace{};
  /// Keep track of the in-process step invocations under way, for
  /// Pipeline::longest_running_step (a server's per-step limit).
  bool watch_steps = false;
};

/// An in-process step invocation under way (Pipeline::longest_running_step).
struct RunningStep {
  std::string_view node;  ///< valid while the Pipeline lives
  std::chrono::nanoseconds elapsed{0};
  /// A synchronous call on the pipeline's strand: it cannot be interrupted, and
  /// the thread running it serves nothing else until it returns.
  bool holds_thread = false;
};

/// A running graph. Made by Plumber::build; runs on a strand of the executor it
/// was built with, so the io_context may have any number of threads.
class Pipeline {
 public:
  /// The strand the pipeline runs on (a boost::asio::strand of the executor it was
  /// built with, type-erased).
  using executor_type = boost::asio::any_io_executor;

  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;
  /// Cancels what still runs (as stop(false)) and waits for nothing: keep the
  /// executor running until done() if you need every record.
  ~Pipeline();

  /// The strand every step, handler and default completion of this pipeline runs on.
  executor_type get_executor() const noexcept;

  /// Where outputs go, as they are produced (the handler cannot make the graph
  /// wait: use stream_outputs for that); set it before start().
  void on_output(OutputHandler handler);
  /// Makes the outputs a bounded stream instead: read it with
  /// async_receive_output. When the reader is behind, the sinks wait (or, with
  /// OutputOverflow::drop, values are dropped and counted). Call before start().
  void stream_outputs(OutputStreamOptions options = {});
  /// The next output record (see OutputSignature). One call at a time; from
  /// any thread; completes on the token's associated executor (the pipeline's
  /// strand when it has none).
  template <class CompletionToken>
  auto async_receive_output(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, OutputSignature>(
        [this](auto handler) {
          receive_output(boost::asio::any_completion_handler<OutputSignature>(std::move(handler)));
        },
        token);
  }
  /// Values the output stream dropped (OutputOverflow::drop).
  std::uint64_t dropped_outputs() const noexcept;
  /// Called once, on the strand, when every processor has finished.
  void on_done(std::function<void()> handler);

  /// Runs every step's on_start, then spawns the processors on the executor.
  /// Worker processes of every `procs` node start in parallel. Throws what an
  /// on_start throws, naming the node. Blocks: from a coroutine or a server,
  /// use async_start.
  void start();
  /// start() without blocking the caller: it runs on a thread of its own and
  /// completes on the token's associated executor with the exception start()
  /// would have thrown (null when it started).
  template <class CompletionToken>
  auto async_start(CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr)>(
        [this](auto handler) {
          start_in_background(
              boost::asio::any_completion_handler<void(std::exception_ptr)>(std::move(handler)));
        },
        token);
  }

  /// Feeds one value to the graph's `input` source. Blocks while its queue is
  /// full (back pressure). Call it from a thread that is not running the
  /// pipeline's executor; from a coroutine use async_feed. Throws UsageError when
  /// the graph has no `input` node, std::system_error(errc::input_closed) after
  /// end_input().
  void feed(json value);
  /// Feeds several values with one hand-off, emitted in order: far cheaper than
  /// a feed() a value (`plumber run` feeds the lines it reads this way). Blocks
  /// while a few batches are still waiting to be emitted (back pressure);
  /// throws as feed() does.
  void feed_batch(std::vector<json> values);
  /// Coroutine form of feed: suspends while the queue is full.
  boost::asio::awaitable<void, executor_type> async_feed(json value);
  /// No more input: the `input` source ends once what was fed has been emitted.
  /// process() then fails with errc::pipeline_stopped.
  void end_input();

  /// Request/response: sends `value` through the `input` source and completes
  /// with what the sinks emitted for it, once nothing derived from it is left in
  /// the graph (see ProcessSignature; on failure the result names the node and
  /// says what went wrong). Call from any thread; completes on the token's
  /// associated executor (the pipeline's strand when it has none), always
  /// posted: never inside a step nor inside this call. Suspends (does not fail)
  /// while the input queue is full. Throws UsageError at once when the graph has
  /// no `input`.
  ///
  /// Honours the token's cancellation slot: terminal or partial cancellation
  /// completes the request at once with boost::asio::error::operation_aborted,
  /// and its message is dropped where it is in the graph (a step that dequeues
  /// it skips it, counted in ProcessorStats::cancelled; a request still waiting
  /// for room in the input queue never enters).
  template <class CompletionToken>
  auto async_process(json value, ProcessOptions options, CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, ProcessSignature>(
        [this](auto handler, json v, ProcessOptions o) {
          start_process(std::move(v), {}, o,
                        boost::asio::any_completion_handler<ProcessSignature>(std::move(handler)));
        },
        token, std::move(value), options);
  }
  /// async_process with binary data: `blobs` travel with `value` through the
  /// graph as a source's blobs do (shared, never copied; bytes made with
  /// allocate_shared_bytes reach worker processes without a copy).
  template <class CompletionToken>
  auto async_process(json value, std::vector<Blob> blobs, ProcessOptions options,
                     CompletionToken&& token) {
    return boost::asio::async_initiate<CompletionToken, ProcessSignature>(
        [this](auto handler, json v, std::vector<Blob> b, ProcessOptions o) {
          start_process(std::move(v), std::move(b), o,
                        boost::asio::any_completion_handler<ProcessSignature>(std::move(handler)));
        },
        token, std::move(value), std::move(blobs), options);
  }
  /// Coroutine form of async_process: the result, or a ProcessError.
  boost::asio::awaitable<ProcessResult, executor_type> process(json value,
                                                               ProcessOptions options = {});

  /// graceful: sources stop producing and the graph drains. Otherwise every
  /// message in flight is reported as cancelled. Thread-safe; returns at once.
  void stop(bool graceful = true);
  /// True once every processor has finished.
  bool done() const noexcept;
  /// Blocks until done(); call it from a thread that does not run the executor.
  void wait() const;

  /// The in-process step invocation (a transform's step, a source's next value)
  /// that has run longest among those under way now, even one that holds the
  /// pipeline's thread; nullopt when none runs or PipelineOptions::watch_steps
  /// is off. Worker processes are not counted (kill_after_ms bounds them).
  /// Thread-safe.
  std::optional<RunningStep> longest_running_step() const;
  /// Per-node counters, in topological order. Thread-safe.
  std::vector<ProcessorStats> stats() const;
  /// How many messages the sources will emit in all, when they all know.
  std::optional<std::uint64_t> expected_messages() const;
  /// How many messages the sources have emitted so far.
  std::uint64_t emitted_messages() const noexcept;
  const GraphSpec& graph() const noexcept;

  /// Writes the trace of the run (PipelineOptions::trace) as Chrome trace
  /// JSON, which Perfetto and chrome://tracing open: a track per node, one per
  /// worker process, a span per step call and worker batch, flow arrows for
  /// sampled messages. Call once done(). Throws UsageError when not tracing.
  void write_trace(std::ostream& out) const;

 private:
  friend class Plumber;
  explicit Pipeline(std::shared_ptr<detail::PipelineCore> core);

  void start_process(json value, std::vector<Blob> blobs, ProcessOptions options,
                     boost::asio::any_completion_handler<ProcessSignature> handler);
  void receive_output(boost::asio::any_completion_handler<OutputSignature> handler);
  void start_in_background(boost::asio::any_completion_handler<void(std::exception_ptr)> handler);

  std::shared_ptr<detail::PipelineCore> core_;
};

}  // namespace plumber
