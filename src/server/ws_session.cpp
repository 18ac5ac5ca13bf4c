// The WebSocket protocol of `plumber serve` (docs/protocol.md): one session per
// connection, on the connection's strand. A reader coroutine handles client
// frames in order; a writer coroutine drains the outbox. Pipelines run on their
// own strands and post their output frames here.
#include <algorithm>
#include <deque>
#include <sstream>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket/stream.hpp>

#include "plumber/plumber.hpp"
#include "server/protocol.hpp"
#include "server/server_impl.hpp"

namespace plumber::server {
namespace {

namespace websocket = beast::websocket;
constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);
/// Events a served run's trace keeps (docs/protocol.md): its frame must fit
/// the client's send queue.
constexpr std::size_t kTraceEvents = 10'000;

/// What a run shares with its pipeline's handlers (which run on the pipeline's
/// strand and must not own the session).
struct RunShared {
  std::atomic<std::uint64_t> outputs{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> cancelled{0};
  std::atomic<bool> cancel_requested{false};
};

/// One run of a graph for a client.
struct Run {
  std::uint64_t id = 0;
  std::shared_ptr<Pipeline> pipeline;
  std::shared_ptr<RunShared> shared = std::make_shared<RunShared>();
  std::uint64_t metrics_key = 0;
  std::uint64_t board_key = 0;  ///< in ServerCore::runs
  bool has_input = false;
  bool input_ended = false;
  bool finished = false;
  std::string cancel_reason;
  std::uint32_t stats_ms = 0;
  bool traced = false;  ///< a "trace" frame goes before "done"
  std::unique_ptr<asio::steady_timer> stats_timer;
  std::unique_ptr<asio::steady_timer> budget;      ///< --max-run-ms
  std::unique_ptr<asio::steady_timer> step_watch;  ///< --max-step-ms
  std::unique_ptr<asio::steady_timer> ending;      ///< see WsSession::give_up
};

/// Worker processes a graph starts (for --max-total-procs).
std::size_t procs_of(const GraphSpec& spec) {
  std::size_t procs = 0;
  for (const NodeSpec& node : spec.nodes)
    procs += node.procs;
  return procs;
}

class WsSession : public Connection, public std::enable_shared_from_this<WsSession> {
 public:
  WsSession(std::shared_ptr<ServerCore> server, beast::tcp_stream stream, ConnectionSlot slot,
            std::uint64_t id)
      : server_(std::move(server)),
        ws_(std::move(stream)),
        slot_(std::move(slot)),
        id_(id),
        writer_wake_(ws_.get_executor()),
        reader_wake_(ws_.get_executor()),
        hard_close_(ws_.get_executor()),
        room_(ws_.get_executor(), asio::steady_timer::time_point::max()),
        watch_timer_(ws_.get_executor()) {
    ++server_->metrics.websockets;
  }

  ~WsSession() override {
    for (auto& [id, run] : runs_)
      server_->runs.remove(run->board_key);
    --server_->metrics.websockets;
    server_->metrics.send_queue_bytes -= static_cast<std::int64_t>(queued_bytes_);
  }

  asio::awaitable<void> run(Request request) {
    websocket::stream_base::timeout timeout;
    timeout.handshake_timeout = std::chrono::seconds(10);
    timeout.idle_timeout = server_->options.idle_timeout;
    timeout.keep_alive_pings = true;
    ws_.set_option(timeout);
    ws_.read_message_max(server_->options.max_frame);
    ws_.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& response) { response.set(http::field::server, "plumber"); }));
    const std::tuple<error_code> accepted = co_await ws_.async_accept(request, tuple_awaitable);
    if (std::get<0>(accepted)) {
      server_->remove_connection(id_);
      co_return;
    }
    server_->replace_connection(id_, shared_from_this());
    asio::co_spawn(ws_.get_executor(), write_loop(shared_from_this()), asio::detached);
    co_await read_loop();
    // The client is gone (or the connection failed): nobody reads the runs any more.
    cancel_runs("the connection closed");
    closing_ = true;
    watch_timer_.cancel();
    writer_wake_.cancel();
    room_.cancel();
    server_->remove_connection(id_);
  }

  void begin_shutdown(std::string reason) override {
    asio::post(ws_.get_executor(), [self = shared_from_this(), reason = std::move(reason)] {
      if (self->shutting_down_ || self->closing_) return;
      self->shutting_down_ = true;
      self->shutdown_reason_ = reason;
      self->send(shutdown_frame(reason, self->server_->options.grace.count()));
      if (self->runs_.empty()) self->close(websocket::close_code::going_away, reason);
    });
  }

  void cancel(std::string reason) override {
    asio::post(ws_.get_executor(), [self = shared_from_this(), reason = std::move(reason)] {
      self->shutting_down_ = true;
      if (self->shutdown_reason_.empty()) self->shutdown_reason_ = reason;
      self->cancel_runs(reason);
      if (self->runs_.empty()) self->close(websocket::close_code::going_away, reason);
      // Shutdown does not wait for a client that does not read its last frames.
      self->drop_after(std::chrono::seconds(1));
    });
  }

  std::size_t queued_bytes() const override { return queued_mirror_.load(); }

  void close_for(std::string reason) override {
    asio::post(ws_.get_executor(), [self = shared_from_this(), reason = std::move(reason)] {
      self->overflow(reason, "total_send_queue_full");
    });
  }

 private:
  // --- reading -----------------------------------------------------------------

  asio::awaitable<void> read_loop() {
    beast::flat_buffer buffer;
    for (;;) {
      // Back pressure: while the client does not read what is queued for it,
      // its frames (inputs, new runs) wait in its socket.
      while (queued_bytes_ > server_->options.max_send_queue / 2 && !closing_) {
        reader_wake_.expires_at(asio::steady_timer::time_point::max());
        co_await reader_wake_.async_wait(tuple_awaitable);
      }
      buffer.clear();
      const std::tuple<error_code, std::size_t> read =
          co_await ws_.async_read(buffer, tuple_awaitable);
      const error_code ec = std::get<0>(read);
      if (ec) {
        if (ec == websocket::error::message_too_big) {
          // Beast has already closed with 1009 (message too big).
          server_->metrics.count_ws_closed("frame_too_large");
        } else if (ec == websocket::error::closed) {
          server_->metrics.count_ws_closed(closing_ ? close_kind_ : "client");
        } else if (ec == beast::error::timeout) {
          server_->metrics.count_ws_closed("idle_timeout");
        } else {
          server_->metrics.count_ws_closed(closing_ ? close_kind_ : "error");
        }
        co_return;
      }
      ++server_->metrics.frames_received;
      if (!ws_.got_text()) {
        ProtocolError error;
        error.code = "protocol.binary_frame";
        error.message = "frames are JSON text; a binary frame was received";
        send_error(error);
        continue;
      }
      if (shutting_down_ && closing_) continue;
      std::string text = beast::buffers_to_string(buffer.data());
      co_await handle(text);
    }
  }

  asio::awaitable<void> handle(const std::string& text) {
    auto parsed = parse_request(text);
    if (auto* error = std::get_if<ProtocolError>(&parsed)) {
      send_error(*error);
      co_return;
    }
    Command request = std::move(std::get<Command>(parsed));
    switch (request.op) {
      case Op::submit:
        submit(request);
        break;
      case Op::input:
        co_await input(request);
        break;
      case Op::end:
        end(request);
        break;
      case Op::cancel:
        cancel_run(request);
        break;
      case Op::stop:
        if (Run* run = find_run(request)) {
          run->input_ended = true;
          run->pipeline->stop(true);
        }
        break;
      case Op::stats:
        if (Run* run = find_run(request)) {
          send(stats_frame(run->id, run->pipeline->stats()));
        }
        break;
      case Op::watch:
        watch_ms_ = request.stats_ms > 0 ? request.stats_ms : 1000;
        if (!watching_) {
          watching_ = true;
          asio::co_spawn(ws_.get_executor(), push_watch(shared_from_this()), asio::detached);
        }
        break;
      case Op::unwatch:
        watch_ms_ = 0;
        watch_timer_.cancel();
        break;
    }
  }

  /// Sends the server-wide view every watch_ms_ until unwatch; skips a frame
  /// while the client is behind (the next one says it all again).
  static asio::awaitable<void> push_watch(std::shared_ptr<WsSession> self) {
    while (self->watch_ms_ > 0 && !self->closing_) {
      if (self->queued_bytes_ <= self->server_->options.max_send_queue / 2) {
        self->send(watch_frame(self->id_, self->server_->runs.runs_json(),
                               self->server_->services_json()));
      }
      self->watch_timer_.expires_after(std::chrono::milliseconds(self->watch_ms_));
      co_await self->watch_timer_.async_wait(tuple_awaitable);
    }
    self->watching_ = false;
  }

  Run* find_run(const Command& request) {
    auto it = runs_.find(request.run);
    if (it != runs_.end()) return it->second.get();
    ProtocolError error;
    error.code = "run.unknown";
    error.pointer = "/run";
    error.message = "no run " + std::to_string(request.run) + " on this connection";
    error.hint = request.run <= last_run_ ? "it has finished (its \"done\" frame was sent)"
                                          : "run ids come from \"accepted\" frames";
    send_error(error, request.run, request.ref);
    return nullptr;
  }

  void submit(const Command& request) {
    ProtocolError error;
    if (shutting_down_) {
      error.code = "server.shutting_down";
      error.message = "the server is shutting down (" + shutdown_reason_ + "): no new runs";
      send_error(error, 0, request.ref);
      return;
    }
    if (runs_.size() >= server_->options.max_runs) {
      error.code = "run.limit";
      error.message = "this connection already has " + std::to_string(runs_.size()) +
                      " runs going on, the most this server allows";
      error.hint = "wait for a \"done\", or open another connection";
      send_error(error, 0, request.ref);
      return;
    }
    GraphSpec spec;
    std::string name;
    try {
      if (!request.name.empty() || request.graph.is_null()) {
        const auto entry = server_->find_graph(request.name);
        if (!entry) {
          error.code = "graph.unknown_name";
          error.pointer = "/name";
          error.message = "no graph named \"" + request.name + "\"";
          error.hint = server_->nearest_graph(request.name);
          send_error(error, 0, request.ref);
          return;
        }
        spec = entry->spec;
        name = entry->name;
      } else {
        spec = server_->load_submitted(request.graph);
        name = spec.name.empty() ? "inline" : "inline:" + spec.name;
      }
    } catch (const GraphError& e) {
      send_error(graph_error(e), 0, request.ref);
      return;
    } catch (const std::exception& e) {
      error.code = "graph.invalid";
      error.message = e.what();
      send_error(error, 0, request.ref);
      return;
    }

    json accepted = accepted_frame(0, request.ref, name, spec);
    const std::size_t procs = procs_of(spec);
    if (auto refused = server_->reserve_run(procs)) {
      error.code = refused->first;
      error.message = refused->second;
      send_error(error, 0, request.ref);
      return;
    }
    auto run = std::make_shared<Run>();
    try {
      run->pipeline = std::make_shared<Pipeline>(
          Plumber(server_->registry)
              .build(spec, server_->executor(),
                     {.collect_timings = true,
                      .trace = {.enabled = request.trace, .max_events = kTraceEvents},
                      .watch_steps = watch_steps()}));
    } catch (const GraphError& e) {
      server_->release_run(procs);
      send_error(graph_error(e), 0, request.ref);
      return;
    }
    run->id = ++last_run_;
    run->has_input = spec.host_fed_input().has_value();
    run->stats_ms = request.stats_ms;
    run->traced = request.trace;
    // The outputs come to this connection as a bounded stream: when the client
    // reads slowly, delivery waits, the stream fills, and the graph holds still.
    run->pipeline->stream_outputs({.capacity = 256, .overflow = OutputOverflow::block});

    // Every handler is set before start(): with several threads the pipeline
    // may finish before start() returns.
    run->metrics_key = server_->metrics.track(name, run->pipeline);
    ++server_->metrics.runs;
    Metrics* metrics = &server_->metrics;
    const std::uint64_t key = run->metrics_key;
    auto shared = run->shared;
    run->pipeline->on_done([shared, metrics, key, server = server_, procs] {
      metrics->finished(key, shared->cancel_requested ? "cancelled" : "completed");
      --metrics->runs;
      server->release_run(procs);
    });
    try {
      run->pipeline->start();
    } catch (const std::exception& e) {
      // It never ran, so it never ends: nothing will call on_done.
      metrics->finished(key, "start_failed");
      --metrics->runs;
      server_->release_run(procs);
      error.code = "run.start_failed";
      error.message = e.what();
      send_error(error, 0, request.ref);
      return;
    }
    accepted["run"] = run->id;
    send(accepted);
    run->board_key = server_->runs.add(id_, run->id, name, run->pipeline);
    runs_.emplace(run->id, run);
    asio::co_spawn(ws_.get_executor(), deliver_outputs(shared_from_this(), run), asio::detached);
    if (run->stats_ms > 0) {
      run->stats_timer = std::make_unique<asio::steady_timer>(ws_.get_executor());
      asio::co_spawn(ws_.get_executor(), push_stats(shared_from_this(), run), asio::detached);
    }
    if (server_->options.max_run.count() > 0) {
      run->budget =
          std::make_unique<asio::steady_timer>(ws_.get_executor(), server_->options.max_run);
      run->budget->async_wait([self = shared_from_this(), run](error_code ec) {
        if (ec || run->finished) return;
        self->give_up(run, "the run took longer than this server allows (--max-run-ms " +
                               std::to_string(self->server_->options.max_run.count()) + ")");
      });
    }
    if (watch_steps()) {
      run->step_watch = std::make_unique<asio::steady_timer>(ws_.get_executor());
      asio::co_spawn(ws_.get_executor(), watch_steps(shared_from_this(), run), asio::detached);
    }
  }

  bool watch_steps() const noexcept { return server_->options.max_step.count() > 0; }

  /// Cancels a run for `reason`. A synchronous step cannot be interrupted: if
  /// the run has not ended a second later, the client gets its "done" then and
  /// the run ends in the background, whenever its step returns.
  void give_up(const std::shared_ptr<Run>& run, const std::string& reason) {
    cancel_one(*run, reason);
    if (run->ending) return;
    run->ending = std::make_unique<asio::steady_timer>(ws_.get_executor(), std::chrono::seconds(1));
    run->ending->async_wait([self = shared_from_this(), run](error_code ec) {
      if (!ec && !run->finished) self->finish_run(run->id);
    });
  }

  /// --max-step-ms: looks at the run's longest step invocation under way a few
  /// times per limit; past the limit, the run is given up.
  static asio::awaitable<void> watch_steps(std::shared_ptr<WsSession> self,
                                           std::shared_ptr<Run> run) {
    using std::chrono::milliseconds;
    const milliseconds limit = self->server_->options.max_step;
    const milliseconds period = std::clamp(limit / 4, milliseconds(5), milliseconds(1000));
    while (!run->finished) {
      run->step_watch->expires_after(period);
      co_await run->step_watch->async_wait(tuple_awaitable);
      if (run->finished) break;
      // No `continue` past a live local in a coroutine: g++ 12 destroys it twice.
      if (step_overran(*self, run, limit)) break;
    }
  }

  /// True when the run's longest step invocation under way is past `limit`:
  /// the run is then given up.
  static bool step_overran(WsSession& self, const std::shared_ptr<Run>& run,
                           std::chrono::milliseconds limit) {
    const std::optional<RunningStep> step = run->pipeline->longest_running_step();
    if (!step || step->elapsed <= limit) return false;
    const std::string node(step->node);
    spdlog::info("websocket connection {}: run {}: the step in node \"{}\" ran longer than {} ms",
                 self.id_, run->id, node, limit.count());
    // Its thread is lost until the step returns: the other runs get another.
    if (step->holds_thread) self.server_->replace_stuck_pipeline_thread();
    self.give_up(run, "the step in node \"" + node + "\" ran longer than " +
                          std::to_string(limit.count()) + " ms (--max-step-ms " +
                          std::to_string(limit.count()) + ")");
    return true;
  }

  /// Sends a run's outputs to the client as it reads them, then its "done":
  /// every output is delivered before "done", whatever the speed of the client.
  static asio::awaitable<void> deliver_outputs(std::shared_ptr<WsSession> self,
                                               std::shared_ptr<Run> run) {
    RunShared& counts = *run->shared;
    for (;;) {
      // The client is behind: wait until the writer has sent some of its queue.
      while (self->queued_bytes_ > self->server_->options.max_send_queue / 2 && !self->closing_) {
        co_await self->room_.async_wait(tuple_awaitable);
      }
      std::tuple<error_code, OutputRecord> next =
          co_await run->pipeline->async_receive_output(tuple_awaitable);
      if (std::get<0>(next)) break;  // eof: the pipeline is done
      const OutputRecord& record = std::get<1>(next);
      switch (record.kind) {
        case OutputRecord::Kind::value:
          ++counts.outputs;
          break;
        case OutputRecord::Kind::error:
          ++counts.failed;
          break;
        case OutputRecord::Kind::cancelled:
          ++counts.cancelled;
          break;
      }
      self->send(record_frame(run->id, record));
    }
    if (run->traced && !self->closing_) {
      while (self->queued_bytes_ > self->server_->options.max_send_queue / 2 && !self->closing_) {
        co_await self->room_.async_wait(tuple_awaitable);
      }
      std::ostringstream trace;
      run->pipeline->write_trace(trace);
      self->push(R"({"type":"trace","run":)" + std::to_string(run->id) + R"(,"trace":)" +
                 std::move(trace).str() + "}");
    }
    self->finish_run(run->id);
  }

  /// Sends a run's counters every stats_ms until it finishes.
  static asio::awaitable<void> push_stats(std::shared_ptr<WsSession> self,
                                          std::shared_ptr<Run> run) {
    while (!run->finished && !self->closing_) {
      run->stats_timer->expires_after(std::chrono::milliseconds(run->stats_ms));
      co_await run->stats_timer->async_wait(tuple_awaitable);
      if (run->finished || self->closing_) break;
      self->send(stats_frame(run->id, run->pipeline->stats()));
    }
  }

  asio::awaitable<void> input(const Command& request) {
    auto it = runs_.find(request.run);
    if (it == runs_.end()) {
      find_run(request);  // reports it
      co_return;
    }
    std::shared_ptr<Run> run = it->second;
    ProtocolError error;
    if (!run->has_input) {
      error.code = "run.no_input";
      error.message = "run " + std::to_string(run->id) + "'s graph has no `input` source";
      send_error(error, run->id, request.ref);
      co_return;
    }
    if (run->input_ended) {
      error.code = "run.input_closed";
      error.message = "run " + std::to_string(run->id) + " takes no more input: it was ended";
      send_error(error, run->id, request.ref);
      co_return;
    }
    for (const json& value : request.values) {
      bool stopped = false;
      try {
        json item = value;
        co_await run->pipeline->async_feed(std::move(item));
      } catch (const std::exception&) {
        stopped = true;
      }
      if (stopped) {
        error.code = "run.stopped";
        error.message = "run " + std::to_string(run->id) + " is stopping and takes no more input";
        send_error(error, run->id, request.ref);
        co_return;
      }
    }
  }

  void end(const Command& request) {
    Run* run = find_run(request);
    if (!run) return;
    ProtocolError error;
    if (!run->has_input) {
      error.code = "run.no_input";
      error.message = "run " + std::to_string(run->id) + "'s graph has no `input` source";
      send_error(error, run->id, request.ref);
      return;
    }
    if (run->input_ended) {
      error.code = "run.input_closed";
      error.message = "run " + std::to_string(run->id) + " was already ended";
      send_error(error, run->id, request.ref);
      return;
    }
    run->input_ended = true;
    run->pipeline->end_input();
  }

  void cancel_run(const Command& request) {
    if (Run* run = find_run(request)) cancel_one(*run, "cancelled by the client");
  }

  void cancel_one(Run& run, const std::string& reason) {
    if (run.shared->cancel_requested.exchange(true)) return;
    run.cancel_reason = reason;
    run.pipeline->stop(false);
  }

  void cancel_runs(const std::string& reason) {
    for (auto& [id, run] : runs_)
      cancel_one(*run, reason);
  }

  void finish_run(std::uint64_t id) {
    auto it = runs_.find(id);
    if (it == runs_.end()) return;
    std::shared_ptr<Run> run = std::move(it->second);
    runs_.erase(it);
    server_->runs.remove(run->board_key);
    run->finished = true;
    if (run->stats_timer) run->stats_timer->cancel();
    if (run->budget) run->budget->cancel();
    if (run->step_watch) run->step_watch->cancel();
    if (run->ending) run->ending->cancel();
    RunSummary summary;
    summary.status = run->shared->cancel_requested ? "cancelled" : "completed";
    summary.reason = run->cancel_reason;
    summary.outputs = run->shared->outputs;
    summary.failed = run->shared->failed;
    summary.cancelled = run->shared->cancelled;
    send(done_frame(id, summary, run->pipeline->stats()));
    if (shutting_down_ && runs_.empty()) {
      close(websocket::close_code::going_away, shutdown_reason_);
    }
  }

  // --- writing -----------------------------------------------------------------

  void send_error(const ProtocolError& error, std::uint64_t run = 0, const json& ref = nullptr) {
    server_->metrics.count_ws_error(error.code);
    send(error_frame(error, run, ref));
  }

  /// Queues a frame made on this strand.
  void send(const json& frame) { push(dump(frame)); }

  void push(std::string frame) {
    if (closing_) return;
    if (queued_bytes_ + frame.size() > server_->options.max_send_queue) {
      overflow();
      return;
    }
    queued_bytes_ += frame.size();
    queued_mirror_ = queued_bytes_;
    const auto total = server_->metrics.send_queue_bytes += static_cast<std::int64_t>(frame.size());
    outbox_.push_back(std::move(frame));
    writer_wake_.cancel();
    if (total > static_cast<std::int64_t>(server_->options.max_total_send_queue)) {
      server_->check_total_send_queue();
    }
  }

  void uncount(std::size_t bytes) {
    queued_bytes_ -= bytes;
    queued_mirror_ = queued_bytes_;
    server_->metrics.send_queue_bytes -= static_cast<std::int64_t>(bytes);
    if (queued_bytes_ <= server_->options.max_send_queue / 2) {
      reader_wake_.cancel();
      room_.cancel();
    }
  }

  /// A frame does not fit in the send queue: the client does not read (or an
  /// output is larger than the limit). Its runs are cancelled and it is closed.
  void overflow() {
    overflow("the client does not read: over " + std::to_string(server_->options.max_send_queue) +
                 " bytes queued for it",
             "send_queue_full");
  }

  /// Drops the TCP connection after `delay` unless it closed by then.
  void drop_after(std::chrono::milliseconds delay) {
    hard_close_.expires_after(delay);
    hard_close_.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec) beast::get_lowest_layer(self->ws_).close();
    });
  }

  void overflow(const std::string& reason, const std::string& kind) {
    if (overflowed_) return;
    overflowed_ = true;
    spdlog::info("websocket connection {}: {}", id_, reason);
    cancel_runs(reason);
    // Drop what it would never read, tell it why, and close.
    std::size_t dropped = 0;
    for (auto& frame : outbox_)
      dropped += frame.size();
    outbox_.clear();
    uncount(dropped);
    ProtocolError error;
    error.code =
        kind == "send_queue_full" ? "connection.send_queue_full" : "server.send_queue_full";
    error.message = reason;
    const std::string frame = dump(error_frame(error, 0, nullptr));
    server_->metrics.count_ws_error(error.code);
    queued_bytes_ += frame.size();
    queued_mirror_ = queued_bytes_;
    server_->metrics.send_queue_bytes += static_cast<std::int64_t>(frame.size());
    outbox_.push_back(frame);
    close(websocket::close_code::policy_error, "send queue full: the client does not read", kind);
    // A client that reads nothing will not read the close either: give it a
    // few seconds, then drop the TCP connection.
    drop_after(std::chrono::seconds(5));
  }

  /// Closes after what is queued has been written.
  void close(websocket::close_code code, const std::string& reason,
             std::string kind = "server_shutdown") {
    if (closing_) return;
    close_ = websocket::close_reason(code, reason.substr(0, 120));
    close_kind_ = std::move(kind);
    closing_ = true;
    watch_timer_.cancel();
    writer_wake_.cancel();
    reader_wake_.cancel();
    room_.cancel();
  }

  static asio::awaitable<void> write_loop(std::shared_ptr<WsSession> self) {
    co_await self->write_frames();
    self->hard_close_.cancel();
  }

  asio::awaitable<void> write_frames() {
    for (;;) {
      while (outbox_.empty() && !closing_) {
        writer_wake_.expires_at(asio::steady_timer::time_point::max());
        co_await writer_wake_.async_wait(tuple_awaitable);
      }
      if (outbox_.empty()) break;  // closing, and everything was written
      std::string frame = std::move(outbox_.front());
      outbox_.pop_front();
      ws_.text(true);
      const std::tuple<error_code, std::size_t> written =
          co_await ws_.async_write(asio::buffer(frame), tuple_awaitable);
      uncount(frame.size());
      if (std::get<0>(written)) {
        closing_ = true;
        co_return;
      }
      ++server_->metrics.frames_sent;
    }
    if (close_ && ws_.is_open()) {
      const websocket::close_reason reason = *close_;
      co_await ws_.async_close(reason, tuple_awaitable);
    }
  }

  std::shared_ptr<ServerCore> server_;
  websocket::stream<beast::tcp_stream> ws_;
  ConnectionSlot slot_;
  std::uint64_t id_;
  asio::steady_timer writer_wake_;
  asio::steady_timer reader_wake_;
  asio::steady_timer hard_close_;
  /// Woken (cancel(), never re-armed) when the send queue has room again: the
  /// runs' output delivery waits on it.
  asio::steady_timer room_;
  asio::steady_timer watch_timer_;
  std::uint32_t watch_ms_ = 0;  ///< `watch`: push every this many ms (0: not watching)
  bool watching_ = false;       ///< push_watch runs
  std::deque<std::string> outbox_;
  std::size_t queued_bytes_ = 0;               ///< in the outbox or being written
  std::atomic<std::size_t> queued_mirror_{0};  ///< queued_bytes_, for other threads
  bool overflowed_ = false;
  std::map<std::uint64_t, std::shared_ptr<Run>> runs_;
  std::uint64_t last_run_ = 0;
  bool shutting_down_ = false;
  bool closing_ = false;
  std::string shutdown_reason_;
  std::optional<websocket::close_reason> close_;
  std::string close_kind_ = "server";
};

}  // namespace

asio::awaitable<void> run_websocket(std::shared_ptr<ServerCore> server, beast::tcp_stream stream,
                                    server::Request request, ConnectionSlot slot,
                                    std::uint64_t id) {
  auto session =
      std::make_shared<WsSession>(std::move(server), std::move(stream), std::move(slot), id);
  co_await session->run(std::move(request));
}

}  // namespace plumber::server
