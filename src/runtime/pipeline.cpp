#include "plumber/pipeline.hpp"

#include <exception>
#include <future>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "plumber/error.hpp"
#include "plumber/plumber.hpp"
#include "plumber/registry.hpp"
#include "runtime/pipeline_core.hpp"

namespace plumber {
namespace detail {

namespace {
std::exception_ptr stopped_error() {
  return std::make_exception_ptr(
      ProcessError(errc::pipeline_stopped, "", "the pipeline no longer accepts input"));
}
}  // namespace

PipelineCore::PipelineCore(GraphSpec graph, const asio::any_io_executor& executor,
                           PipelineOptions options)
    : graph_(std::move(graph)), options_(options), strand_(asio::make_strand(executor)) {}

PipelineCore::~PipelineCore() {
  for (auto& link : reader_links_) {
    std::lock_guard lock(link->mutex);
    link->feed = nullptr;
  }
}

void PipelineCore::spawn(asio::awaitable<void> task) {
  auto slot = signals_.emplace(signals_.end());
  ++live_tasks_;
  asio::co_spawn(strand_, std::move(task),
                 asio::bind_cancellation_slot(
                     slot->slot(), [self = shared_from_this(), slot](std::exception_ptr error) {
                       self->signals_.erase(slot);
                       if (error && !self->cancelled_) {
                         // A bug, not a step failure (those become error records):
                         // cancel everything rather than leave the graph hanging.
                         try {
                           std::rethrow_exception(error);
                         } catch (const std::exception& e) {
                           spdlog::error("pipeline {}: internal error: {}", self->graph_.name,
                                         e.what());
                         }
                         self->cancel_all();
                       }
                       self->task_finished();
                     }));
}

void PipelineCore::task_finished() {
  if (--live_tasks_ != 0) return;
  for (auto& feed : feeds) {
    feed->ended = true;
    feed->channel.close();
  }
  for (auto& [id, request] : requests_)
    finish(*request, stopped_error());
  requests_.clear();
  {
    std::lock_guard lock(done_mutex_);
    done_flag_.store(true, std::memory_order_release);
  }
  done_cv_.notify_all();
  if (done_handler) done_handler();
}

void PipelineCore::wait() const {
  std::unique_lock lock(done_mutex_);
  done_cv_.wait(lock, [&] { return done_flag_.load(std::memory_order_acquire); });
}

void PipelineCore::output_value(std::string_view node, Message&& message) {
  if (!requests_.empty()) {
    if (auto it = requests_.find(message.id); it != requests_.end()) {
      Request& request = *it->second;
      if (!request.finished) {
        OutputRecord record;
        record.id = message.id;
        record.node = node;
        record.value = std::move(message.value);
        record.blobs = std::move(message.blobs);
        request.result.outputs.push_back(std::move(record));
      }
      track_request(message.id, -1);
      return;
    }
  }
  if (!output_handler) return;
  OutputRecord record;
  record.kind = OutputRecord::Kind::value;
  record.id = message.id;
  record.node = node;
  record.value = std::move(message.value);
  record.blobs = std::move(message.blobs);
  output_handler(std::move(record));
}

void PipelineCore::output_error(std::string_view node, std::uint64_t id, std::string error,
                                errc code) {
  if (!requests_.empty()) {
    if (auto it = requests_.find(id); it != requests_.end()) {
      const std::string where(node);
      finish(*it->second, std::make_exception_ptr(
                              ProcessError(code, where, "node \"" + where + "\": " + error)));
      return;
    }
  }
  if (!output_handler) return;
  OutputRecord record;
  record.kind = OutputRecord::Kind::error;
  record.id = id;
  record.node = node;
  record.error = std::move(error);
  output_handler(std::move(record));
}

void PipelineCore::output_cancelled(std::string_view node, std::uint64_t id) {
  if (!cancelled_ids_.insert(id).second) return;
  if (auto it = requests_.find(id); it != requests_.end()) {
    const std::string where(node);
    finish(*it->second, std::make_exception_ptr(ProcessError(
                            errc::cancelled, where, "cancelled at node \"" + where + "\"")));
    requests_.erase(it);
    return;
  }
  if (!output_handler) return;
  OutputRecord record;
  record.kind = OutputRecord::Kind::cancelled;
  record.id = id;
  record.node = node;
  record.error = "cancelled";
  output_handler(std::move(record));
}

// --- request/response ----------------------------------------------------------

void PipelineCore::start_request(std::shared_ptr<Request> request, json value) {
  if (!input_feed || input_feed->ended || cancelled_ || done()) {
    finish(*request, stopped_error());
    return;
  }
  request->timer.expires_at(request->deadline);
  request->timer.async_wait([self = shared_from_this(), request](error_code ec) {
    if (ec || request->finished) return;
    self->finish(*request, std::make_exception_ptr(ProcessError(
                               errc::timed_out, "", "no result before the request's timeout")));
  });
  FeedItem item;
  item.value = std::move(value);
  item.request = request;
  input_feed->channel.async_send(
      error_code{}, std::move(item),
      asio::bind_executor(strand_, [self = shared_from_this(), request](error_code ec) {
        if (ec) self->finish(*request, stopped_error());
      }));
}

void PipelineCore::admit_request(std::uint64_t id, const std::shared_ptr<Request>& request) {
  request->id = id;
  request->tokens = 1;
  requests_.emplace(id, request);
}

void PipelineCore::track_request(std::uint64_t id, std::int64_t delta) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  Request& request = *it->second;
  request.tokens += delta;
  if (request.tokens > 0) return;
  finish(request, nullptr);
  requests_.erase(it);
}

void PipelineCore::finish(Request& request, std::exception_ptr error) {
  if (request.finished) return;
  request.finished = true;
  request.timer.cancel();
  // The handler (made by Pipeline::async_process) posts to the caller's executor.
  std::move(request.handler)(error, std::move(request.result));
}

void PipelineCore::start() {
  if (started_) throw UsageError("Pipeline::start: the pipeline was already started");
  started_ = true;
  for (auto& processor : processors) {
    try {
      processor->on_start();
    } catch (const std::exception& e) {
      throw std::runtime_error("node \"" + processor->spec().id +
                               "\": on_start failed: " + e.what());
    }
  }
  asio::post(strand_, [self = shared_from_this()] {
    self->start_blocking_readers();
    for (std::size_t index : self->graph_.topological_order) {
      auto& processor = self->processors[index];
      if (!processor->fused_in()) self->spawn(processor->run());
    }
  });
}

void PipelineCore::start_blocking_readers() {
  for (auto& processor : processors) {
    const auto& source = processor->source();
    if (!source || !source->is_blocking()) continue;
    auto feed = std::make_shared<FeedQueue>(strand_, processor->spec());
    feeds.push_back(feed);
    processor->set_feed(feed);
    auto link = std::make_shared<ReaderLink>();
    link->feed = feed.get();
    reader_links_.push_back(link);
    // Detached: a read from a terminal cannot be interrupted, and must not keep
    // the pipeline (or the process) from finishing. It reaches the feed only
    // through `link`, so it never outlives it nor destroys it: the channel must
    // die on this side, before the io_context it belongs to.
    std::thread([link, source] {
      try {
        for (bool last = false; !last;) {
          FeedItem item;
          try {
            item.value = source->next();
            item.end = !item.value;
          } catch (const SourceItemError& e) {
            item.error = e.what();
          } catch (const std::exception& e) {
            item.error = e.what();
            item.end = true;
          }
          last = item.end;
          std::future<void> sent;
          {
            std::lock_guard lock(link->mutex);
            if (!link->feed || link->feed->ended) return;
            sent = link->feed->channel.async_send(error_code{}, std::move(item), asio::use_future);
          }
          sent.get();  // throws once the feed is closed or destroyed
        }
      } catch (const std::exception&) {
        // The pipeline stopped.
      }
    }).detach();
  }
}

void PipelineCore::end_feeds() {
  for (auto& feed : feeds) {
    if (!feed->ended.exchange(true)) send_feed_end(feed, strand_);
  }
}

void send_feed_end(const std::shared_ptr<FeedQueue>& feed, const Strand& strand) {
  asio::co_spawn(
      strand,
      [feed]() -> asio::awaitable<void> {
        // A named item, not a temporary inside co_await: g++ 12 destroys those early.
        FeedItem end;
        end.end = true;
        co_await feed->channel.async_send(error_code{}, std::move(end),
                                          asio::as_tuple(asio::use_awaitable));
      },
      asio::detached);
}

void PipelineCore::cancel_all() {
  cancelled_ = true;
  sources_stopping_ = true;
  for (auto& feed : feeds) {
    feed->ended = true;
    // Values fed but not yet emitted never got an id: report them with a new one.
    while (feed->channel.try_receive([&](error_code, FeedItem item) {
      if (item.request) {
        finish(*item.request, std::make_exception_ptr(ProcessError(
                                  errc::cancelled, "", "cancelled before it entered the graph")));
      } else if (item.value) {
        output_cancelled(feed->node_id, next_id());
      }
    })) {
    }
    feed->channel.close();
  }
  for (auto& signal : signals_)
    signal.emit(asio::cancellation_type::terminal);
}

void PipelineCore::stop(bool graceful) {
  asio::post(strand_, [self = shared_from_this(), graceful] {
    if (!self->started_ || self->live_tasks_ == 0) return;
    if (graceful) {
      self->sources_stopping_ = true;
      self->end_feeds();
    } else {
      self->cancel_all();
    }
  });
}

}  // namespace detail

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
        .async_send(detail::error_code{}, detail::FeedItem{std::move(value), nullptr, false, {}},
                    boost::asio::use_future)
        .get();
  } catch (const boost::system::system_error&) {
    throw std::system_error(make_error_code(errc::pipeline_stopped));
  }
}

boost::asio::awaitable<void> Pipeline::async_feed(json value) {
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
  if (!feed->ended.exchange(true)) detail::send_feed_end(feed, core_->strand());
}

void Pipeline::start_process(json value, ProcessOptions options,
                             boost::asio::any_completion_handler<ProcessSignature> handler) {
  if (!core_->input_feed) {
    throw UsageError("graph \"" + core_->graph().name +
                     "\" has no `input` node: process() has nowhere to send values");
  }
  auto request = std::make_shared<detail::Request>(core_->strand(), std::move(handler));
  request->priority = options.priority;
  const auto now = Clock::now();
  request->deadline = options.timeout >= Clock::time_point::max() - now ? Clock::time_point::max()
                                                                        : now + options.timeout;
  boost::asio::post(core_->strand(),
                    [core = core_, request = std::move(request), v = std::move(value)]() mutable {
                      core->start_request(std::move(request), std::move(v));
                    });
}

boost::asio::awaitable<ProcessResult> Pipeline::process(json value,
                                                        std::chrono::milliseconds timeout,
                                                        std::uint8_t priority) {
  ProcessOptions options;
  options.timeout = timeout;
  options.priority = priority;
  // A named operation, not a temporary inside co_await: g++ 12 destroys those early.
  auto operation = async_process(std::move(value), options, boost::asio::use_awaitable);
  co_return co_await std::move(operation);
}

boost::asio::any_io_executor Pipeline::executor_() const {
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

ProcessError::ProcessError(errc code, std::string node, const std::string& what)
    : std::runtime_error(what), code_(code), node_(std::move(node)) {}

std::vector<ProcessorStats> Pipeline::stats() const {
  std::vector<ProcessorStats> all;
  for (std::size_t index : core_->graph().topological_order) {
    all.push_back(core_->processors[index]->stats());
  }
  return all;
}

std::optional<std::uint64_t> Pipeline::expected_messages() const {
  std::uint64_t total = 0;
  for (const auto& processor : core_->processors) {
    if (!processor->is_source()) continue;
    auto hint = processor->source()->size_hint();
    if (!hint || processor->spec().coroutine == "input") return std::nullopt;
    total += *hint;
  }
  return total;
}

std::uint64_t Pipeline::emitted_messages() const noexcept {
  std::uint64_t total = 0;
  for (const auto& processor : core_->processors) {
    if (processor->is_source()) total += processor->emitted();
  }
  return total;
}

// --- Plumber -----------------------------------------------------------------

Pipeline Plumber::build(const GraphSpec& graph, boost::asio::any_io_executor executor,
                        PipelineOptions options) const {
  auto core = std::make_shared<detail::PipelineCore>(graph, executor, options);
  const GraphSpec& spec = core->graph();
  std::vector<Diagnostic> missing;
  for (std::size_t i = 0; i < spec.nodes.size(); ++i) {
    const NodeSpec& node = spec.nodes[i];
    const CoroutineInfo* info = registry_.find(node.coroutine);
    const PredicateInfo* when = node.when.empty() ? nullptr : registry_.find_predicate(node.when);
    if (!info) {
      missing.push_back({"graph.unknown_coroutine", "/nodes/" + std::to_string(i) + "/coroutine",
                         "unknown coroutine \"" + node.coroutine + "\"", ""});
      continue;
    }
    if (!node.when.empty() && !when) {
      missing.push_back({"graph.unknown_predicate", "/nodes/" + std::to_string(i) + "/when",
                         "unknown predicate \"" + node.when + "\"", ""});
      continue;
    }
    core->processors.push_back(std::make_unique<detail::Processor>(*core, node, *info, when));
  }
  if (!missing.empty()) throw GraphError(spec.file, std::move(missing));

  for (std::size_t i = 0; i < spec.nodes.size(); ++i) {
    if (spec.nodes[i].coroutine != "input") continue;
    core->input_feed = std::make_shared<detail::FeedQueue>(core->strand(), spec.nodes[i]);
    core->feeds.push_back(core->input_feed);
    core->processors[i]->set_feed(core->input_feed);
  }
  for (std::size_t to = 0; to < spec.nodes.size(); ++to) {
    const auto& predecessors = spec.predecessors[to];
    for (std::size_t port = 0; port < predecessors.size(); ++port) {
      core->processors[predecessors[port]]->connect(*core->processors[to],
                                                    static_cast<std::uint16_t>(port));
    }
  }
  // A node feeds a zip when a zip is downstream of it: it must then announce the
  // ids it drops, or the zip would wait for them forever.
  std::vector<bool> feeds_zip(spec.nodes.size(), false);
  for (auto it = spec.topological_order.rbegin(); it != spec.topological_order.rend(); ++it) {
    for (std::size_t next : spec.successors[*it]) {
      if (spec.nodes[next].join == JoinPolicy::zip || feeds_zip[next]) feeds_zip[*it] = true;
    }
    if (feeds_zip[*it]) core->processors[*it]->set_feeds_zip();
  }
  for (std::size_t from = 0; from < spec.nodes.size(); ++from) {
    if (spec.successors[from].size() != 1) continue;
    auto& successor = *core->processors[spec.successors[from][0]];
    if (core->processors[from]->may_fuse() && successor.fusible()) {
      core->processors[from]->fuse(successor);
    }
  }
  return Pipeline(std::move(core));
}

}  // namespace plumber
