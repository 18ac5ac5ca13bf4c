// PipelineCore: the state a Pipeline shares with its processors; start, stop,
// outputs, and the accounting of process() requests.
#include <exception>
#include <future>
#include <string>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "plumber/error.hpp"
#include "runtime/pipeline_core.hpp"
#include "runtime/source_processor.hpp"

namespace plumber::detail {

namespace {
void finish_stopped(PipelineCore& core, Request& request) {
  core.finish(request, errc::pipeline_stopped, "", "the pipeline no longer accepts input");
}
}  // namespace

PipelineCore::PipelineCore(GraphSpec graph, const asio::any_io_executor& executor,
                           PipelineOptions options)
    : graph_(std::move(graph)),
      options_(options),
      strand_(asio::make_strand(executor)),
      step_watch_(options.watch_steps ? std::make_unique<StepWatch>() : nullptr) {
  if (options_.trace.enabled) tracer_ = std::make_unique<Tracer>(graph_, options_.trace);
}

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
    feed->refuse_more();
    feed->channel.close();
  }
  for (auto& [id, request] : requests_)
    finish_stopped(*this, *request);
  requests_.clear();
  if (output_stream_) output_stream_->finish();
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

bool PipelineCore::try_output_value(std::string_view node, Message& message) {
  if (!requests_.empty()) {
    if (auto it = requests_.find(message.id); it != requests_.end()) {
      Request& request = *it->second;
      if (!request.finished) {
        OutputRecord record;
        record.id = message.id;
        record.node.assign(node);
        record.value = std::move(message.value);
        record.blobs = std::move(message.blobs);
        request.result.outputs.push_back(std::move(record));
      }
      track_request(message.id, -1);
      return true;
    }
  }
  if (!output_handler && !output_stream_) return true;
  if (output_stream_ && output_stream_->full() && output_stream_->blocks()) return false;
  OutputRecord record;
  record.kind = OutputRecord::Kind::value;
  record.id = message.id;
  record.node.assign(node);
  record.value = std::move(message.value);
  record.blobs = std::move(message.blobs);
  if (output_handler) {
    output_handler(std::move(record));
    return true;
  }
  return output_stream_->try_push_value(record);
}

void PipelineCore::deliver(OutputRecord&& record) {
  if (output_handler) {
    output_handler(std::move(record));
  } else if (output_stream_) {
    output_stream_->push(std::move(record));
  }
}

asio::awaitable<void> PipelineCore::wait_output_room() {
  while (output_full()) {
    co_await output_stream_->wait_taken();
    if (cancelled_) throw boost::system::system_error(asio::error::operation_aborted);
  }
}

void PipelineCore::stream_outputs(OutputStreamOptions options) {
  if (started_) throw UsageError("Pipeline::stream_outputs: call it before start()");
  output_stream_.emplace(strand_, options);
}

void PipelineCore::receive_output(OutputStream::Handler handler) {
  if (!output_stream_) {
    throw UsageError("Pipeline::async_receive_output: call stream_outputs() before start()");
  }
  asio::post(strand_, [self = shared_from_this(), handler = std::move(handler)]() mutable {
    self->output_stream_->receive(std::move(handler));
  });
}

bool PipelineCore::note_position(std::uint64_t id, std::string_view node) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return true;
  if (it->second->cancelled) return false;
  it->second->where = node;
  return true;
}

void PipelineCore::output_error(std::string_view node, std::uint64_t id, std::string error,
                                errc code) {
  if (!requests_.empty()) {
    if (auto it = requests_.find(id); it != requests_.end()) {
      std::string where(node);
      std::string what = "node \"" + where + "\": " + error;
      finish(*it->second, code, std::move(where), std::move(what));
      return;
    }
  }
  OutputRecord record;
  record.kind = OutputRecord::Kind::error;
  record.id = id;
  record.node.assign(node);
  record.error = std::move(error);
  deliver(std::move(record));
}

void PipelineCore::output_cancelled(std::string_view node, std::uint64_t id) {
  if (!cancelled_ids_.insert(id).second) return;
  if (auto it = requests_.find(id); it != requests_.end()) {
    std::string where(node);
    std::string what = "cancelled at node \"" + where + "\"";
    finish(*it->second, errc::cancelled, std::move(where), std::move(what));
    // Kept (finished) until the pipeline ends, not erased: copies of the message
    // on other branches may still report a value or an error before they see
    // the cancellation, and those belong to the caller, never to on_output.
    return;
  }
  OutputRecord record;
  record.kind = OutputRecord::Kind::cancelled;
  record.id = id;
  record.node.assign(node);
  record.error = "cancelled";
  deliver(std::move(record));
}

// --- request/response ----------------------------------------------------------

void PipelineCore::start_request(std::shared_ptr<Request> request, json value,
                                 std::vector<Blob> blobs) {
  if (!started_) {
    finish(*request, errc::not_started, "", "process() before start(): start the pipeline first");
    return;
  }
  if (request->finished) return;  // cancelled by its caller before it got here
  if (!input_feed || input_feed->ended || cancelled_ || done()) {
    finish_stopped(*this, *request);
    return;
  }
  request->timer.expires_at(request->deadline);
  request->timer.async_wait([self = shared_from_this(), request](error_code ec) {
    if (ec || request->finished) return;
    std::string where = request->where;
    std::string what = where.empty() ? "no result before the request's timeout (it had not "
                                       "entered the graph)"
                                     : "no result before the request's timeout (the message was "
                                       "at node \"" +
                                           where + "\")";
    self->finish(*request, errc::timed_out, std::move(where), std::move(what));
  });
  FeedItem item;
  item.value = std::move(value);
  item.blobs = std::move(blobs);
  item.request = request;
  input_feed->channel.async_send(
      error_code{}, std::move(item),
      asio::bind_executor(strand_, [self = shared_from_this(), request](error_code ec) {
        if (ec) finish_stopped(*self, *request);
      }));
}

void PipelineCore::admit_request(std::uint64_t id, const std::shared_ptr<Request>& request) {
  request->id = id;
  request->tokens = 1;
  request->where = input_feed->node_id;  // the input source emits it
  requests_.emplace(id, request);
}

void PipelineCore::track_request(std::uint64_t id, std::int64_t delta) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  Request& request = *it->second;
  request.tokens += delta;
  if (request.tokens > 0) return;
  finish(request);
  requests_.erase(it);
}

void PipelineCore::finish(Request& request, error_code error, std::string node, std::string what) {
  if (request.finished) return;
  request.finished = true;
  request.timer.cancel();
  ProcessResult result = std::move(request.result);
  if (error) {
    result.outputs.clear();
    result.node = std::move(node);
    result.error = std::move(what);
  }
  // Always posted, so it never runs inside a step, and run on the caller's
  // executor (the strand when it has none); the cancellation slot is cleared
  // there, where the caller emits its signal, just before the handler runs.
  auto executor = asio::get_associated_executor(request.handler, strand_);
  asio::post(strand_, asio::bind_executor(executor, [handler = std::move(request.handler), error,
                                                     result = std::move(result)]() mutable {
               auto slot = asio::get_associated_cancellation_slot(handler);
               if (slot.is_connected()) slot.clear();
               std::move(handler)(error, std::move(result));
             }));
}

void PipelineCore::cancel_request(Request& request) {
  if (request.finished) return;
  request.cancelled = true;
  finish(request, asio::error::operation_aborted, request.where,
         request.where.empty()
             ? "cancelled by the caller before it entered the graph"
             : "cancelled by the caller (the message was at node \"" + request.where + "\")");
}

void PipelineCore::start() {
  if (started_.exchange(true))
    throw UsageError("Pipeline::start: the pipeline was already started");
  // Two phases, so that the worker processes of every node start in parallel:
  // start takes as long as the slowest node, not the sum.
  std::size_t index = 0;
  try {
    for (; index < processors.size(); ++index)
      processors[index]->launch();
    for (index = 0; index < processors.size(); ++index)
      processors[index]->on_start();
  } catch (const std::exception& e) {
    throw std::runtime_error("node \"" + processors[index]->spec().id +
                             "\": on_start failed: " + e.what());
  }
  rates.begin(Clock::now());
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
    auto* node = dynamic_cast<SourceProcessor*>(processor.get());
    if (!node || node->fed() || !node->source()->is_blocking()) continue;
    const std::shared_ptr<Source> source = node->source();
    auto feed = std::make_shared<FeedQueue>(strand_, node->spec());
    feeds.push_back(feed);
    node->set_feed(feed);
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
            if (item.value) item.blobs = source->take_blobs();
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
    if (!feed->refuse_more()) send_feed_end(feed, strand_);
  }
}

FeedQueue::BatchSent FeedQueue::send_batch(FeedItem& item) {
  std::unique_lock lock(batch_mutex_);
  batch_room_.wait(lock, [&] { return batches_ < kMaxBatches || ended.load(); });
  if (ended.load()) return BatchSent::refused;
  ++batches_;
  // try_send leaves `item` untouched when it fails.
  return channel.try_send(error_code{}, std::move(item)) ? BatchSent::sent : BatchSent::no_room;
}

void FeedQueue::release_batch() {
  {
    std::lock_guard lock(batch_mutex_);
    --batches_;
  }
  batch_room_.notify_one();
}

bool FeedQueue::refuse_more() {
  bool was_ended = false;
  {
    std::lock_guard lock(batch_mutex_);
    was_ended = ended.exchange(true);
  }
  batch_room_.notify_all();
  return was_ended;
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
    feed->refuse_more();
    // Values fed but not yet emitted never got an id: report them with a new one.
    while (feed->channel.try_receive([&](error_code, FeedItem item) {
      if (item.request) {
        finish(*item.request, errc::cancelled, "", "cancelled before it entered the graph");
      } else if (item.value) {
        output_cancelled(feed->node_id, next_id());
      }
      for (std::size_t i = 0; i < item.batch.size(); ++i)
        output_cancelled(feed->node_id, next_id());
    })) {
    }
    feed->channel.close();
  }
  for (auto& processor : processors) {
    if (processor->fused_in()) processor->cancel_held_parts();
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

}  // namespace plumber::detail
