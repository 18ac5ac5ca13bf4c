#pragma once
/// The state of `plumber serve` that every connection shares (ServerCore), and
/// what the server sees of a connection. No Beast here: the runs of a
/// WebSocket client (client_runs.cpp) compile without it. Beast's HTTP message
/// types are only declared; server_impl.hpp completes them.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "plumber/blob.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/pipeline.hpp"
#include "plumber/server.hpp"
#include "plumber/worker_pool.hpp"
#include "server/graph_policy.hpp"
#include "server/metrics.hpp"
#include "server/watch.hpp"

// Beast's HTTP message, declared as Beast declares it (boost/beast/http/type_traits.hpp);
// server_impl.hpp checks that Request and Response are Beast's own types.
namespace boost::beast::http {
template <class Allocator>
class basic_fields;
template <class CharT, class Traits, class Allocator>
struct basic_string_body;
template <bool isRequest, class Body, class Fields>
class message;
enum class status : unsigned;
}  // namespace boost::beast::http

namespace plumber::server {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
/// http::request<http::string_body> and http::response<http::string_body>.
using Request =
    http::message<true, http::basic_string_body<char, std::char_traits<char>, std::allocator<char>>,
                  http::basic_fields<std::allocator<char>>>;
using Response =
    http::message<false,
                  http::basic_string_body<char, std::char_traits<char>, std::allocator<char>>,
                  http::basic_fields<std::allocator<char>>>;

struct BodyRead;

/// A graph file of --graphs, one version of it (immutable once loaded).
struct CatalogEntry {
  std::string name;  ///< the file name without .json
  GraphSpec spec;
  json document;     ///< as written in the file
  std::string text;  ///< the file's bytes: a reload compares them
  std::string description;
  bool has_input = false;
  std::uint64_t version = 1;  ///< 1 when the server started, +1 at each reload that changed it
};

/// The long-lived pipeline that POST /v1/graphs/NAME/process runs values through.
struct Service {
  std::string name;
  std::uint64_t version = 1;  ///< of the catalog entry it runs
  std::shared_ptr<Pipeline> pipeline;
  std::uint64_t metrics_key = 0;
  std::size_t procs = 0;
  std::atomic<bool> done{false};
  /// A newer version took its place: its input is ended, requests in flight finish on it.
  std::atomic<bool> retired{false};
};

/// An open TCP connection (HTTP or WebSocket), as the server sees it at shutdown.
class Connection {
 public:
  virtual ~Connection() = default;
  /// Shutdown began: stop taking new work, tell the client `reason`. Thread-safe.
  virtual void begin_shutdown(std::string reason) = 0;
  /// Bytes queued for the client (0 for HTTP). Thread-safe.
  virtual std::size_t queued_bytes() const { return 0; }
  /// Closes the connection for `reason` (the server's total send queue is full). Thread-safe.
  virtual void close_for(std::string reason) { (void)reason; }
  /// The grace period is over: cancel what still runs and close. Thread-safe.
  virtual void cancel(std::string reason) = 0;
};

/// Counts an open connection in the metrics for as long as it lives.
class ConnectionSlot {
 public:
  explicit ConnectionSlot(Metrics& metrics) : metrics_(&metrics) { ++metrics_->connections; }
  ConnectionSlot(ConnectionSlot&& other) noexcept
      : metrics_(std::exchange(other.metrics_, nullptr)) {}
  ConnectionSlot& operator=(ConnectionSlot&&) = delete;
  ~ConnectionSlot() {
    if (metrics_) --metrics_->connections;
  }

 private:
  Metrics* metrics_;
};

class ServerCore : public std::enable_shared_from_this<ServerCore> {
  // Declared first, destroyed last: every pipeline (services_, runs, the
  // metrics' references) dies before the io_context it runs on.
  mutable asio::io_context pipeline_io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> pipeline_work_;
  std::vector<std::thread> pipeline_threads_;
  std::mutex pipeline_mutex_;
  std::condition_variable pipeline_exited_;
  std::size_t pipeline_running_ = 0;     // threads inside pipeline_io_.run()
  std::size_t replacement_threads_ = 0;  // started for threads held by a step that never returns
  std::atomic<std::size_t> total_runs_{0};
  std::atomic<std::size_t> total_procs_{0};

 public:
  ServerCore(const Registry& registry, asio::any_io_executor executor, ServerOptions options);
  ~ServerCore();

  void start();
  void shutdown(std::string reason);

  /// Registers a live connection; at shutdown it is told at once. Thread-safe.
  std::uint64_t add_connection(const std::shared_ptr<Connection>& connection);
  /// Replaces a connection (an HTTP connection upgraded to a WebSocket).
  void replace_connection(std::uint64_t id, const std::shared_ptr<Connection>& connection);
  void remove_connection(std::uint64_t id);
  bool stopping() const noexcept { return stopping_.load(); }
  /// Where pipelines run: their own threads, never a connection's (a busy
  /// step must not hold up accepting, other clients, or shutdown).
  asio::any_io_executor executor() const noexcept { return pipeline_io_.get_executor(); }
  /// Reserves a run and its worker processes against --max-total-runs and
  /// --max-total-procs: the refusal {code, message}, or nullopt. Thread-safe.
  /// A /v1 graph (`count_run` false) counts its processes only.
  std::optional<std::pair<std::string, std::string>> reserve_run(std::size_t procs,
                                                                 bool count_run = true);
  void release_run(std::size_t procs, bool count_run = true);
  /// While all clients together have more than --max-total-send-queue bytes
  /// queued, closes the one with the most. Thread-safe.
  void check_total_send_queue();
  /// A synchronous step past --max-step-ms holds a pipeline thread (it cannot
  /// be interrupted): starts another, up to --pipeline-threads of them in all,
  /// so that the other runs go on. Thread-safe.
  void replace_stuck_pipeline_thread();
  /// See Server::wait_pipelines.
  bool wait_pipelines(std::chrono::milliseconds limit);
  std::string stop_reason() const;

  /// Loads a submitted graph (inline document, or a catalog name) and applies
  /// the server's policy. Throws GraphError.
  GraphSpec load_submitted(const json& document) const;
  std::shared_ptr<const CatalogEntry> find_graph(std::string_view name) const;
  /// The /v1 pipeline now serving graph `name`, or null.
  std::shared_ptr<Service> find_service(std::string_view name) const;
  /// Every graph of the catalog, in name order.
  std::vector<std::shared_ptr<const CatalogEntry>> graphs() const;
  /// Every /v1 pipeline, serving or retired and draining.
  std::vector<std::shared_ptr<Service>> all_services() const;
  /// Reads --graphs again (SIGHUP, a change seen by inotify, an edit): each
  /// changed file is validated first; a valid one replaces its graph (and
  /// swaps its /v1 pipeline: requests in flight finish on the old one), a
  /// broken one leaves the old version serving and is reported in the log and
  /// /metrics; a removed file removes its graph. Thread-safe; blocks.
  void reload(const std::string& why);
  /// The /v1 pipelines for a `watch` frame: `[{"name", "version", "retired", "stats"}]`.
  json services_json() const;
  /// PUT or DELETE /v1/graphs/NAME (--allow-edits): writes --graphs atomically, then reloads.
  void edit_graph(const Request& request, Response& response, std::string_view name);
  /// "did you mean" for an unknown graph name; empty when nothing is close.
  std::string nearest_graph(std::string_view name) const;

  /// A binary /v1 process body on its way in: where it goes, and its bytes
  /// (defined in server_impl.hpp, with Beast).
  struct Upload;
  /// Checks a POST /v1/graphs/NAME/process with a binary body before the body
  /// is read (token, origin, graph, query, Content-Length, --max-upload-bytes,
  /// room in shared memory) and allocates its bytes; on refusal fills
  /// `response` and returns nullopt.
  std::optional<Upload> begin_upload(const Request& head, std::optional<std::uint64_t> length,
                                     bool chunked, Response& response);
  /// The body was read into `upload.bytes`: runs it through the graph, the
  /// value being {"content_type", "size"} and the bytes its blob. False (and
  /// nothing to answer) when the body ended early.
  asio::awaitable<bool> end_upload(const Request& head, Upload& upload, const BodyRead& body,
                                   Response& response);

  /// Answers one HTTP request (not a WebSocket upgrade) into `response`.
  asio::awaitable<void> handle(const Request& request, Response& response);
  /// An HTTP error or WebSocket refusal: JSON body {"error": {"code", "message"}}.
  void refuse(const Request& request, Response& response, http::status status,
              const std::string& code, const std::string& message);
  /// Checks the token (every path but /healthz) and the Origin (WebSocket
  /// upgrades and non-GET requests); fills `response` and returns false when refused.
  bool admit(const Request& request, Response& response);

  const Registry& registry;
  const ServerOptions options;
  GraphLimits limits;
  /// The limits of the graphs in --graphs DIR, which the operator wrote: they
  /// may run programs (`exec`); submitted and PUT graphs may not.
  GraphLimits catalog_limits() const {
    GraphLimits trusted = limits;
    trusted.allow_programs = true;
    return trusted;
  }
  Metrics metrics;
  RunBoard runs;  ///< every WebSocket run, for `watch`
  std::function<void()> stopped_handler;

 private:
  asio::awaitable<void> accept();
  /// Answers 503 to a connection over --max-connections, and closes it (http_session.cpp).
  asio::awaitable<void> refuse_connection(tcp::socket socket);
  /// Throws std::invalid_argument when --allow-edits lacks what it needs.
  void check_edit_options() const;
  void load_catalog();
  /// Opens, binds and listens; throws std::system_error naming the address.
  void listen();
  void start_services();
  /// Starts one more thread on pipeline_io_ (pipeline_mutex_ held).
  void start_pipeline_thread();
  void cancel_everything(const std::string& reason);
  void check_stopped();
  /// The `timeout_ms` and `priority` of a /v1 process query; nullopt, and
  /// `bad` set to why, when one is malformed.
  std::optional<ProcessOptions> process_params(std::string_view query, std::string& bad) const;
  /// Runs a /v1 request through `service`: the JSON body, or `upload` (a
  /// binary body) as the blob of {"content_type", "size"}.
  asio::awaitable<void> process(const Request& request, Response& response,
                                std::shared_ptr<Service> service,
                                std::optional<Blob> upload = std::nullopt);
  /// Where a /v1 value refused with `ec` by `service` goes next: the version
  /// that replaced it (a reload retired it between finding and feeding), or null.
  std::shared_ptr<Service> successor(const boost::system::error_code& ec,
                                     const Service& service) const;
  /// Builds and starts the /v1 pipeline of `entry`; null (logged) when it cannot.
  std::shared_ptr<Service> start_service(const CatalogEntry& entry);
  /// Starts watching --graphs with inotify (inotify_; left null, logged, when it cannot).
  void open_catalog_watch();
  /// Reloads when inotify reports a change in --graphs (see catalog.cpp).
  asio::awaitable<void> watch_catalog();
  /// Forgets retired pipelines that have finished (catalog_mutex_ held).
  void prune_retired();

  asio::any_io_executor executor_;
  asio::strand<asio::any_io_executor> strand_;
  tcp::acceptor acceptor_;
  asio::steady_timer grace_timer_;
  mutable std::mutex catalog_mutex_;  // guards catalog_, services_, retired_, broken_
  std::map<std::string, std::shared_ptr<const CatalogEntry>, std::less<>> catalog_;
  std::map<std::string, std::shared_ptr<Service>, std::less<>> services_;
  std::vector<std::shared_ptr<Service>> retired_;
  /// Files that failed their last reload: name -> (their bytes, the first diagnostic).
  std::map<std::string, std::pair<std::string, std::string>, std::less<>> broken_;
  std::mutex reload_mutex_;                                  // one reload at a time
  std::unique_ptr<asio::posix::stream_descriptor> inotify_;  // on strand_

  mutable std::mutex mutex_;  // guards what follows
  std::atomic<bool> stopping_{false};
  bool cancelled_ = false;
  bool stopped_ = false;
  std::string stop_reason_;
  std::uint64_t next_connection_ = 0;
  std::map<std::uint64_t, std::weak_ptr<Connection>> connections_;

  friend class plumber::Server;
};

/// Serves HTTP requests on an accepted `socket` (its executor is the
/// connection's strand) until the connection ends or upgrades to a WebSocket.
void start_http_session(std::shared_ptr<ServerCore> server, tcp::socket socket);

}  // namespace plumber::server
