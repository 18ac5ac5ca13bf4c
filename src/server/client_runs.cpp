// The runs of one WebSocket client (docs/protocol.md), on its connection's
// strand: each request about runs, and each run's output delivery and timers.
// Pipelines run on their own strands; their outputs come here through a
// bounded stream, and go to the connection as frames.
#include "server/client_runs.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <sstream>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "plumber/plumber.hpp"

namespace plumber::server {
namespace {

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

/// Worker processes a graph starts (for --max-total-procs).
std::size_t procs_of(const GraphSpec& spec) {
  std::size_t procs = 0;
  for (const NodeSpec& node : spec.nodes)
    procs += node.procs;
  return procs;
}

}  // namespace

/// One run of a graph for a client.
struct ClientRuns::Run {
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
  std::unique_ptr<asio::steady_timer> ending;      ///< see ClientRuns::give_up
};

ClientRuns::ClientRuns(std::shared_ptr<ServerCore> server, RunsHost& host, std::uint64_t connection,
                       asio::any_io_executor executor)
    : server_(std::move(server)),
      host_(host),
      id_(connection),
      executor_(std::move(executor)),
      watch_timer_(executor_) {}

ClientRuns::~ClientRuns() {
  for (auto& [id, run] : runs_)
    server_->runs.remove(run->board_key);
}

asio::awaitable<void> ClientRuns::handle(const std::string& text) {
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
        asio::co_spawn(executor_, push_watch(shared_this()), asio::detached);
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
asio::awaitable<void> ClientRuns::push_watch(std::shared_ptr<ClientRuns> self) {
  while (self->watch_ms_ > 0 && !self->host_.closing()) {
    if (!self->host_.behind()) {
      self->send(
          watch_frame(self->id_, self->server_->runs.runs_json(), self->server_->services_json()));
    }
    self->watch_timer_.expires_after(std::chrono::milliseconds(self->watch_ms_));
    co_await self->watch_timer_.async_wait(tuple_awaitable);
  }
  self->watching_ = false;
}

ClientRuns::Run* ClientRuns::find_run(const Command& request) {
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

void ClientRuns::submit(const Command& request) {
  ProtocolError error;
  if (const std::optional<std::string> reason = host_.shutting_down()) {
    error.code = "server.shutting_down";
    error.message = "the server is shutting down (" + *reason + "): no new runs";
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
  asio::co_spawn(executor_, deliver_outputs(shared_this(), run), asio::detached);
  if (run->stats_ms > 0) {
    run->stats_timer = std::make_unique<asio::steady_timer>(executor_);
    asio::co_spawn(executor_, push_stats(shared_this(), run), asio::detached);
  }
  if (server_->options.max_run.count() > 0) {
    run->budget = std::make_unique<asio::steady_timer>(executor_, server_->options.max_run);
    run->budget->async_wait([self = shared_this(), run](error_code ec) {
      if (ec || run->finished) return;
      self->give_up(run, "the run took longer than this server allows (--max-run-ms " +
                             std::to_string(self->server_->options.max_run.count()) + ")");
    });
  }
  if (watch_steps()) {
    run->step_watch = std::make_unique<asio::steady_timer>(executor_);
    asio::co_spawn(executor_, watch_steps(shared_this(), run), asio::detached);
  }
}

/// Cancels a run for `reason`. A synchronous step cannot be interrupted: if
/// the run has not ended a second later, the client gets its "done" then and
/// the run ends in the background, whenever its step returns.
void ClientRuns::give_up(const std::shared_ptr<Run>& run, const std::string& reason) {
  cancel_one(*run, reason);
  if (run->ending) return;
  run->ending = std::make_unique<asio::steady_timer>(executor_, std::chrono::seconds(1));
  run->ending->async_wait([self = shared_this(), run](error_code ec) {
    if (!ec && !run->finished) self->finish_run(run->id);
  });
}

/// --max-step-ms: looks at the run's longest step invocation under way a few
/// times per limit; past the limit, the run is given up.
asio::awaitable<void> ClientRuns::watch_steps(std::shared_ptr<ClientRuns> self,
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
bool ClientRuns::step_overran(ClientRuns& self, const std::shared_ptr<Run>& run,
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
asio::awaitable<void> ClientRuns::deliver_outputs(std::shared_ptr<ClientRuns> self,
                                                  std::shared_ptr<Run> run) {
  RunShared& counts = *run->shared;
  for (;;) {
    // The client is behind: wait until the writer has sent some of its queue.
    co_await self->host_.wait_for_room();
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
  if (run->traced && !self->host_.closing()) {
    co_await self->host_.wait_for_room();
    std::ostringstream trace;
    run->pipeline->write_trace(trace);
    self->host_.push(R"({"type":"trace","run":)" + std::to_string(run->id) + R"(,"trace":)" +
                     std::move(trace).str() + "}");
  }
  self->finish_run(run->id);
}

/// Sends a run's counters every stats_ms until it finishes.
asio::awaitable<void> ClientRuns::push_stats(std::shared_ptr<ClientRuns> self,
                                             std::shared_ptr<Run> run) {
  while (!run->finished && !self->host_.closing()) {
    run->stats_timer->expires_after(std::chrono::milliseconds(run->stats_ms));
    co_await run->stats_timer->async_wait(tuple_awaitable);
    if (run->finished || self->host_.closing()) break;
    self->send(stats_frame(run->id, run->pipeline->stats()));
  }
}

asio::awaitable<void> ClientRuns::input(const Command& request) {
  auto it = runs_.find(request.run);
  if (it == runs_.end()) {
    find_run(request);  // reports it
    co_return;
  }
  std::shared_ptr<Run> run = it->second;
  if (input_refused(*run, request, " takes no more input: it was ended")) co_return;
  ProtocolError error;
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

bool ClientRuns::input_refused(const Run& run, const Command& request, const char* ended) {
  ProtocolError error;
  if (!run.has_input) {
    error.code = "run.no_input";
    error.message = "run " + std::to_string(run.id) + "'s graph has no `input` source";
  } else if (run.input_ended) {
    error.code = "run.input_closed";
    error.message = "run " + std::to_string(run.id) + ended;
  } else {
    return false;
  }
  send_error(error, run.id, request.ref);
  return true;
}

void ClientRuns::end(const Command& request) {
  Run* run = find_run(request);
  if (!run || input_refused(*run, request, " was already ended")) return;
  run->input_ended = true;
  run->pipeline->end_input();
}

void ClientRuns::cancel_run(const Command& request) {
  if (Run* run = find_run(request)) cancel_one(*run, "cancelled by the client");
}

void ClientRuns::cancel_one(Run& run, const std::string& reason) {
  if (run.shared->cancel_requested.exchange(true)) return;
  run.cancel_reason = reason;
  run.pipeline->stop(false);
}

void ClientRuns::cancel_runs(const std::string& reason) {
  for (auto& [id, run] : runs_)
    cancel_one(*run, reason);
}

void ClientRuns::finish_run(std::uint64_t id) {
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
  if (runs_.empty()) host_.no_runs_left();
}

void ClientRuns::send_error(const ProtocolError& error, std::uint64_t run, const json& ref) {
  server_->metrics.count_ws_error(error.code);
  send(error_frame(error, run, ref));
}

}  // namespace plumber::server
