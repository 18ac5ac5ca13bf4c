#pragma once
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/system/error_code.hpp>

#include "plumber/error.hpp"

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

/// What the sinks emitted for one message sent with Pipeline::process.
struct ProcessResult {
  std::vector<OutputRecord> outputs;  ///< value records, in the order the sinks emitted them
  /// The one value emitted; an array of them when there were several; null when
  /// none (every branch filtered it out, or the sinks emit nothing, like `print`).
  json value() const;
};

/// Why Pipeline::process failed: code() is errc::timed_out (node() names where
/// the message was), errc::step_failed (node() names the step),
/// errc::cancelled, errc::pipeline_stopped or errc::not_started.
class ProcessError : public std::runtime_error {
 public:
  ProcessError(errc code, std::string node, const std::string& what);
  errc code() const noexcept { return code_; }
  /// The node that failed or held the message; empty when it had not entered the graph.
  const std::string& node() const noexcept { return node_; }

 private:
  errc code_;
  std::string node_;
};

/// How one process() request travels.
struct ProcessOptions {
  /// From the call until the result: past it the caller gets errc::timed_out and
  /// the message is dropped wherever it is in the graph (an async step running it
  /// is interrupted; a step that dequeues it skips it).
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};
  /// 0 is the lowest lane; clamped to `settings.priorities - 1`.
  std::uint8_t priority = 0;
};

/// Completion signature of Pipeline::async_process.
using ProcessSignature = void(std::exception_ptr, ProcessResult);

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

  /// Where outputs go, as they are produced (the handler cannot make the graph
  /// wait: use stream_outputs for that); set it before start().
  void on_output(OutputHandler handler);
  /// Makes the outputs a bounded stream instead: read it with
  /// async_receive_output. When the reader is behind, the sinks wait (or, with
  /// OutputOverflow::drop, values are dropped and counted). Call before start().
  void stream_outputs(OutputStreamOptions options = {});
  /// The next output record (see OutputSignature). One call at a time; from
  /// any thread; completes on the token's associated executor.
  template <
      class CompletionToken = boost::asio::default_completion_token_t<boost::asio::any_io_executor>>
  auto async_receive_output(CompletionToken&& token = {}) {
    return boost::asio::async_initiate<CompletionToken, OutputSignature>(
        [this](auto handler) {
          auto executor = boost::asio::get_associated_executor(handler, executor_());
          receive_output([handler = std::move(handler), executor](boost::system::error_code ec,
                                                                  OutputRecord record) mutable {
            boost::asio::post(executor,
                              boost::asio::append(std::move(handler), ec, std::move(record)));
          });
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
  template <
      class CompletionToken = boost::asio::default_completion_token_t<boost::asio::any_io_executor>>
  auto async_start(CompletionToken&& token = {}) {
    return boost::asio::async_initiate<CompletionToken, void(std::exception_ptr)>(
        [this](auto handler) {
          auto executor = boost::asio::get_associated_executor(handler, executor_());
          start_in_background(
              [handler = std::move(handler), executor](std::exception_ptr error) mutable {
                boost::asio::post(executor, boost::asio::append(std::move(handler), error));
              });
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
  boost::asio::awaitable<void> async_feed(json value);
  /// No more input: the `input` source ends once what was fed has been emitted.
  /// process() then fails with errc::pipeline_stopped.
  void end_input();

  /// Request/response: sends `value` through the `input` source and completes
  /// with what the sinks emitted for it, once nothing derived from it is left in
  /// the graph. Fails with ProcessError. Values emitted for the request go to
  /// the caller only, not to on_output. Call from any thread; the completion
  /// runs on the token's associated executor. Suspends (does not fail) while the
  /// input queue is full. Throws UsageError at once when the graph has no `input`.
  template <
      class CompletionToken = boost::asio::default_completion_token_t<boost::asio::any_io_executor>>
  auto async_process(json value, ProcessOptions options, CompletionToken&& token = {}) {
    return boost::asio::async_initiate<CompletionToken, ProcessSignature>(
        [this](auto handler, json v, ProcessOptions o) {
          // Completes on the handler's own executor (the pipeline's strand when it
          // has none), always posted: the caller never runs inside a step.
          auto executor = boost::asio::get_associated_executor(handler, executor_());
          start_process(std::move(v), o,
                        [handler = std::move(handler), executor](std::exception_ptr error,
                                                                 ProcessResult result) mutable {
                          boost::asio::post(executor, boost::asio::append(std::move(handler), error,
                                                                          std::move(result)));
                        });
        },
        token, std::move(value), options);
  }
  /// Coroutine form of async_process; throws ProcessError.
  boost::asio::awaitable<ProcessResult> process(json value, std::chrono::milliseconds timeout,
                                                std::uint8_t priority = 0);

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
  void start_process(json value, ProcessOptions options,
                     boost::asio::any_completion_handler<ProcessSignature> handler);
  void receive_output(boost::asio::any_completion_handler<OutputSignature> handler);
  void start_in_background(boost::asio::any_completion_handler<void(std::exception_ptr)> handler);
  boost::asio::any_io_executor executor_() const;

  std::shared_ptr<detail::PipelineCore> core_;
};

}  // namespace plumber
