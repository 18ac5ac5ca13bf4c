#pragma once
/// The runs of one WebSocket client of `plumber serve` (docs/protocol.md): the
/// client's requests (submit, input, end, cancel, stop, stats, watch), each
/// run's pipeline, output delivery and timers (stats, --max-run-ms,
/// --max-step-ms). The connection that carries them (WsSession, in
/// ws_session.cpp) reads and writes the frames. No Beast here.
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "plumber/json.hpp"
#include "server/protocol.hpp"
#include "server/server_core.hpp"

namespace plumber::server {

/// What a client's runs need from the connection that carries them. Called on
/// the connection's strand.
class RunsHost {
 public:
  /// Queues a frame for the client (dropped once the connection is closing).
  virtual void push(std::string frame) = 0;
  /// True while the client is behind: over half of its send queue waits.
  virtual bool behind() const = 0;
  /// Waits while the client is behind and the connection is open.
  virtual asio::awaitable<void> wait_for_room() = 0;
  /// True once the connection is closing: nothing more is sent.
  virtual bool closing() const = 0;
  /// Why the server is shutting down, while it is: new runs are refused.
  virtual std::optional<std::string> shutting_down() const = 0;
  /// A run has finished (its "done" was queued) and none is left.
  virtual void no_runs_left() = 0;
  /// Keeps the connection alive: each timer and coroutine of the runs holds one.
  virtual std::shared_ptr<void> hold() = 0;

 protected:
  ~RunsHost() = default;
};

/// The runs of one client, on its connection's strand (`executor`).
class ClientRuns {
 public:
  /// `connection` is the connection's id (for `watch` and the log).
  ClientRuns(std::shared_ptr<ServerCore> server, RunsHost& host, std::uint64_t connection,
             asio::any_io_executor executor);
  ClientRuns(const ClientRuns&) = delete;
  ClientRuns& operator=(const ClientRuns&) = delete;
  ~ClientRuns();

  /// Handles one text frame of the client.
  asio::awaitable<void> handle(const std::string& text);
  /// Cancels every run for `reason`.
  void cancel_runs(const std::string& reason);
  bool empty() const noexcept { return runs_.empty(); }
  /// The connection is closing: wakes the `watch` pushes, which then end.
  void stop_watching() { watch_timer_.cancel(); }

 private:
  struct Run;

  /// This, holding the connection.
  std::shared_ptr<ClientRuns> shared_this() { return {host_.hold(), this}; }

  static asio::awaitable<void> push_watch(std::shared_ptr<ClientRuns> self);
  Run* find_run(const Command& request);
  void submit(const Command& request);
  bool watch_steps() const noexcept { return server_->options.max_step.count() > 0; }
  void give_up(const std::shared_ptr<Run>& run, const std::string& reason);
  static asio::awaitable<void> watch_steps(std::shared_ptr<ClientRuns> self,
                                           std::shared_ptr<Run> run);
  static bool step_overran(ClientRuns& self, const std::shared_ptr<Run>& run,
                           std::chrono::milliseconds limit);
  static asio::awaitable<void> deliver_outputs(std::shared_ptr<ClientRuns> self,
                                               std::shared_ptr<Run> run);
  static asio::awaitable<void> push_stats(std::shared_ptr<ClientRuns> self,
                                          std::shared_ptr<Run> run);
  asio::awaitable<void> input(const Command& request);
  /// Whether `run` takes no input (the error is sent): it has no `input`
  /// source, or it was ended (`ended` ends the message then).
  bool input_refused(const Run& run, const Command& request, const char* ended);
  void end(const Command& request);
  void cancel_run(const Command& request);
  void cancel_one(Run& run, const std::string& reason);
  void finish_run(std::uint64_t id);

  void send_error(const ProtocolError& error, std::uint64_t run = 0, const json& ref = nullptr);
  /// Queues a frame made on this strand.
  void send(const json& frame) { host_.push(dump(frame)); }

  std::shared_ptr<ServerCore> server_;
  RunsHost& host_;
  std::uint64_t id_;  ///< the connection's
  asio::any_io_executor executor_;
  asio::steady_timer watch_timer_;
  std::uint32_t watch_ms_ = 0;  ///< `watch`: push every this many ms (0: not watching)
  bool watching_ = false;       ///< push_watch runs
  std::map<std::uint64_t, std::shared_ptr<Run>> runs_;
  std::uint64_t last_run_ = 0;
};

}  // namespace plumber::server
