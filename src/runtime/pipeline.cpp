// Pipeline: the public face of a running graph.
#include "plumber/pipeline.hpp"

#include <exception>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "plumber/error.hpp"
#include "plumber/graph_spec.hpp"
#include "runtime/pipeline_core.hpp"
#include "runtime/source_processor.hpp"

namespace plumber {

// --- Pipeline ----------------------------------------------------------------

Pipeline::Pipeline(std::shared_ptr<detail::PipelineCore> core) : core_(std::move(core)) {}
Pipeline::Pipeline(Pipeline&&) noexcept = default;
Pipeline& Pipeline::operator=(Pipeline&&) noexcept = default;

Pipeline::~Pipeline() {
  if (core_ && !core_->done()) core_->stop(false);
}

void Pipeline::on_output(OutputHandler handler) {
  core_->output_handler = std::move(handler);
}
void Pipeline::on_done(std::function<void()> handler) {
  core_->done_handler = std::move(handler);
}
void Pipeline::start() {
  core_->start();
}
void Pipeline::stop(bool graceful) {
  core_->stop(graceful);
}
bool Pipeline::done() const noexcept {
  return core_->done();
}
void Pipeline::wait() const {
  core_->wait();
}
const GraphSpec& Pipeline::graph() const noexcept {
  return core_->graph();
}

namespace {
detail::FeedQueue& input_feed(detail::PipelineCore& core) {
  if (!core.input_feed) {
    throw UsageError("graph \"" + core.graph().name +
                     "\" has no `input` node: nothing can be fed to it");
  }
  if (core.input_feed->ended) throw std::system_error(make_error_code(errc::input_closed));
  return *core.input_feed;
}
}  // namespace

void Pipeline::feed(json value) {
  auto& feed = input_feed(*core_);
  try {
    feed.channel
        .async_send(detail::error_code{},
                    detail::FeedItem{std::move(value), nullptr, false, {}, {}, {}},
                    boost::asio::use_future)
        .get();
  } catch (const boost::system::system_error&) {
    throw std::system_error(make_error_code(errc::pipeline_stopped));
  }
}

void Pipeline::feed_batch(std::vector<json> values) {
  if (values.empty()) return;
  auto& feed = input_feed(*core_);
  detail::FeedItem item;
  item.batch = std::move(values);
  switch (feed.send_batch(item)) {
    case detail::FeedQueue::BatchSent::sent:
      return;
    case detail::FeedQueue::BatchSent::refused:
      throw std::system_error(make_error_code(errc::input_closed));
    case detail::FeedQueue::BatchSent::no_room:
      break;
  }
  // Single values fill the channel: wait for room (use_future completes
  // through Asio's system thread pool, a few wake-ups).
  try {
    feed.channel.async_send(detail::error_code{}, std::move(item), boost::asio::use_future).get();
  } catch (const boost::system::system_error&) {
    feed.release_batch();
    throw std::system_error(make_error_code(errc::pipeline_stopped));
  }
}

boost::asio::awaitable<void, Pipeline::executor_type> Pipeline::async_feed(json value) {
  auto& feed = input_feed(*core_);
  // A named item, not a temporary inside co_await: g++ 12 destroys those early.
  detail::FeedItem item;
  item.value = std::move(value);
  const std::tuple<detail::error_code> sent = co_await feed.channel.async_send(
      detail::error_code{}, std::move(item), boost::asio::as_tuple(boost::asio::use_awaitable));
  if (std::get<0>(sent)) throw std::system_error(make_error_code(errc::pipeline_stopped));
}

void Pipeline::end_input() {
  if (!core_->input_feed) return;
  auto feed = core_->input_feed;
  if (!feed->refuse_more()) detail::send_feed_end(feed, core_->strand());
}

void Pipeline::start_process(json value, std::vector<Blob> blobs, ProcessOptions options,
                             boost::asio::any_completion_handler<ProcessSignature> handler) {
  if (!core_->input_feed) {
    throw UsageError("graph \"" + core_->graph().name +
                     "\" has no `input` node: process() has nowhere to send values");
  }
  auto slot = boost::asio::get_associated_cancellation_slot(handler);
  auto request = std::make_shared<detail::Request>(core_->strand(), std::move(handler));
  request->priority = options.priority;
  const auto now = Clock::now();
  request->deadline = options.timeout >= Clock::time_point::max() - now ? Clock::time_point::max()
                                                                        : now + options.timeout;
  if (slot.is_connected()) {
    // Runs where the caller emits the signal: the request is only touched on
    // the strand. Weak: a finished request, or a pipeline gone, ignores it.
    slot.assign(
        [core = std::weak_ptr<detail::PipelineCore>(core_),
         weak = std::weak_ptr<detail::Request>(request)](boost::asio::cancellation_type type) {
          using boost::asio::cancellation_type;
          if ((type & (cancellation_type::terminal | cancellation_type::partial)) ==
              cancellation_type::none)
            return;
          auto live = core.lock();
          if (!live) return;
          boost::asio::post(live->strand(), [live, weak] {
            if (auto request = weak.lock()) live->cancel_request(*request);
          });
        });
  }
  boost::asio::post(core_->strand(), [core = core_, request = std::move(request),
                                      v = std::move(value), b = std::move(blobs)]() mutable {
    core->start_request(std::move(request), std::move(v), std::move(b));
  });
}

boost::asio::awaitable<ProcessResult, Pipeline::executor_type> Pipeline::process(
    json value, ProcessOptions options) {
  // A named operation and a named result, not temporaries or structured
  // bindings around co_await: g++ 12 destroys those early, or twice.
  auto operation =
      async_process(std::move(value), options, boost::asio::as_tuple(boost::asio::use_awaitable));
  std::tuple<boost::system::error_code, ProcessResult> outcome = co_await std::move(operation);
  ProcessResult& result = std::get<1>(outcome);
  if (const boost::system::error_code ec = std::get<0>(outcome)) {
    throw ProcessError(ec, std::move(result.node), std::move(result.error));
  }
  co_return std::move(result);
}

Pipeline::executor_type Pipeline::get_executor() const noexcept {
  return core_->strand();
}

json ProcessResult::value() const {
  if (outputs.empty()) return nullptr;
  if (outputs.size() == 1) return outputs.front().value;
  json all = json::array();
  for (const auto& record : outputs)
    all.push_back(record.value);
  return all;
}

ProcessError::ProcessError(std::error_code code, std::string node, std::string what)
    : std::system_error(code, what), node_(std::move(node)), what_(std::move(what)) {}

void Pipeline::write_trace(std::ostream& out) const {
  if (!core_->tracer()) throw UsageError("Pipeline::write_trace: the run is not traced");
  core_->tracer()->write(out);
}

std::optional<RunningStep> Pipeline::longest_running_step() const {
  const detail::StepWatch* watch = core_->step_watch();
  if (!watch) return std::nullopt;
  const auto oldest = watch->oldest();
  if (!oldest) return std::nullopt;
  return RunningStep{oldest->node, Clock::now() - oldest->since, oldest->holds_thread};
}

std::vector<ProcessorStats> Pipeline::stats() const {
  std::vector<ProcessorStats> all;
  for (std::size_t index : core_->graph().topological_order) {
    all.push_back(core_->processors[index]->stats());
  }
  core_->rates.apply(all, Clock::now());
  return all;
}

std::optional<std::uint64_t> Pipeline::expected_messages() const {
  std::uint64_t total = 0;
  for (const auto& processor : core_->processors) {
    const auto* source = dynamic_cast<const detail::SourceProcessor*>(processor.get());
    if (!source) continue;
    if (source->info().capabilities.host_fed) return std::nullopt;
    auto hint = source->source()->size_hint();
    if (!hint) return std::nullopt;
    total += *hint;
  }
  return total;
}

std::uint64_t Pipeline::emitted_messages() const noexcept {
  std::uint64_t total = 0;
  for (const auto& processor : core_->processors) {
    if (processor->info().kind == CoroutineKind::source) total += processor->emitted();
  }
  return total;
}

void Pipeline::stream_outputs(OutputStreamOptions options) {
  core_->stream_outputs(options);
}

void Pipeline::receive_output(boost::asio::any_completion_handler<OutputSignature> handler) {
  // Posted through the strand to the handler's own executor (the strand when
  // it has none), as Asio's operations complete: never inside a step.
  core_->receive_output([handler = std::move(handler), strand = core_->strand()](
                            boost::system::error_code ec, OutputRecord record) mutable {
    boost::asio::post(strand, boost::asio::append(std::move(handler), ec, std::move(record)));
  });
}

std::uint64_t Pipeline::dropped_outputs() const noexcept {
  return core_->dropped_outputs();
}

void Pipeline::start_in_background(
    boost::asio::any_completion_handler<void(std::exception_ptr)> handler) {
  // start() blocks while worker processes run their on_start: on a thread of
  // its own, a server's event loop goes on meanwhile.
  // The thread counts as work of the io_context until it is done with it: the
  // handler can run as soon as it is posted, and the caller then destroy the
  // pipeline and the io_context while this thread is still inside post()
  // (ThreadSanitizer saw it). So: post, drop the pipeline, then the work.
  std::optional work(boost::asio::prefer(core_->strand().get_inner_executor(),
                                         boost::asio::execution::outstanding_work.tracked));
  std::thread([core = core_, handler = std::move(handler), work = std::move(work)]() mutable {
    std::exception_ptr error;
    try {
      core->start();
    } catch (...) {
      error = std::current_exception();
    }
    boost::asio::post(core->strand(), boost::asio::append(std::move(handler), error));
    core.reset();
    work.reset();
  }).detach();
}

}  // namespace plumber
