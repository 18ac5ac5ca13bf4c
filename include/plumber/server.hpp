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
  /// Where `lines`/`jsonl` sources may read; empty: they are refused.
  std::string allow_files;
  std::size_t max_frame = 1 << 20;      ///< bytes of a WebSocket message or an HTTP body
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
  /// Called once, on the executor, when shutdown has closed everything.
  void on_stopped(std::function<void()> handler);

 private:
  std::shared_ptr<server::ServerCore> core_;
};

}  // namespace plumber
