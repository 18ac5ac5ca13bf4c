#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/any_io_executor.hpp>

#include "plumber/registry.hpp"

namespace plumber {

namespace server {
class ServerCore;
}

/// How `plumber serve` runs (see docs/cli.md and docs/protocol.md).
struct ServerOptions {
  std::string bind = "127.0.0.1";
  std::uint16_t port = 8080;  ///< 0: any free port (Server::port() tells which)
  /// Graph files (`*.json`) that clients may name, and that POST /v1/graphs/NAME/process runs.
  std::string graphs_dir;
  /// When set, every endpoint but /healthz needs `Authorization: Bearer TOKEN` or `?token=TOKEN`.
  std::string token;
  /// `PUT` and `DELETE /v1/graphs/NAME` write graphs_dir (needs `token` when
  /// bound beyond loopback).
  bool allow_edits = false;
  /// Watch graphs_dir with inotify and reload a graph when its file changes.
  bool watch_graphs = true;
  /// Where `lines`/`jsonl` sources may read; empty: they are refused.
  std::string allow_files;
  std::size_t max_frame = 1 << 20;  ///< bytes of a WebSocket message or an HTTP (JSON) body
  /// Bytes of a binary body of POST /v1/graphs/NAME/process (one with a
  /// non-JSON Content-Type), read straight into shared memory.
  std::size_t max_upload_bytes = std::size_t{64} << 20;
  std::size_t max_nodes = 256;          ///< nodes of a submitted graph
  std::size_t max_threads = 16;         ///< threads + procs of a submitted graph
  std::size_t max_connections = 10000;  ///< open TCP connections
  std::size_t max_runs = 16;            ///< runs at once per WebSocket connection
  /// Bytes queued for one WebSocket client: past half of it the server stops
  /// reading that client's frames and its runs wait; an output that would pass
  /// all of it closes the connection.
  std::size_t max_send_queue = 8 << 20;
  std::chrono::milliseconds grace{10000};  ///< shutdown: how long runs may finish
  std::chrono::seconds idle_timeout{60};   ///< HTTP keep-alive, and unanswered WebSocket pings
  std::chrono::milliseconds process_timeout{30000};  ///< default for /v1/.../process
  /// Threads that run the served pipelines (never the threads that accept and
  /// serve connections: a busy step does not hold up /healthz or shutdown).
  std::size_t pipeline_threads = 1;
  /// A WebSocket run still going after this long is cancelled (0: no limit).
  std::chrono::milliseconds max_run{0};
  /// A WebSocket run with one in-process step invocation (a transform's step,
  /// a source's next value) running longer than this is cancelled (0: no limit).
  std::chrono::milliseconds max_step{60000};
  std::size_t max_total_runs = 256;  ///< runs at once, all connections together
  std::size_t max_total_procs = 64;  ///< worker processes of all runs and /v1 graphs
  /// Bytes queued for all WebSocket clients together: past it, the clients
  /// with the most queued are closed first.
  std::size_t max_total_send_queue = std::size_t{256} << 20;
  /// SO_SNDBUF of each accepted connection (0: the kernel's, which Linux grows
  /// to a few MB for a client that does not read). Bytes in it are not in the
  /// send queue: a small buffer makes a slow client's back pressure reach the
  /// queue sooner, and bounds the kernel memory each one holds.
  std::size_t socket_send_buffer = 0;
};

/// The socket server: HTTP and WebSocket on one port, on the executor it is
/// given (an io_context may run it on any number of threads).
class Server {
 public:
  /// Loads the graphs of `options.graphs_dir` (throws GraphError) and binds
  /// (throws std::system_error: "cannot listen on 127.0.0.1:8080: Address
  /// already in use"). `registry` must outlive the server.
  Server(const Registry& registry, boost::asio::any_io_executor executor, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// The port it listens on.
  std::uint16_t port() const noexcept;
  /// Starts accepting, and starts the shared pipelines of /v1/graphs/NAME/process.
  void start();
  /// Graceful shutdown: stops accepting, tells every client `reason`, lets runs
  /// finish for the grace period, then cancels them and closes. Thread-safe; a
  /// second call skips what is left of the grace period.
  void shutdown(std::string reason);
  /// Reads graphs_dir again (as on SIGHUP): changed graphs are validated, then
  /// swapped in; a broken file leaves its old version serving. Thread-safe.
  void reload();
  /// Called once, on the executor, when shutdown has closed everything.
  void on_stopped(std::function<void()> handler);
  /// After shutdown: waits at most `limit` for the pipeline threads to finish;
  /// false when a step still runs on one (a synchronous step cannot be
  /// interrupted; the caller may then exit without it).
  bool wait_pipelines(std::chrono::milliseconds limit);

 private:
  std::shared_ptr<server::ServerCore> core_;
};

}  // namespace plumber
