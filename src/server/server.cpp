// `plumber serve`: accepting, HTTP routes, /v1 request/response, shutdown.
// The WebSocket protocol is in ws_session.cpp.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/websocket/rfc6455.hpp>

#include "json_parse.hpp"
#include "plumber/plumber.hpp"
#include "server/http_util.hpp"
#include "server/page_api.hpp"
#include "server/protocol.hpp"
#include "server/server_impl.hpp"
#include "server/upload.hpp"

namespace plumber::server {

bool valid_graph_name(std::string_view name) {
  return !name.empty() && name.size() <= 128 && name.front() != '.' &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
         });
}

void set_json(Response& response, http::status status, const json& body) {
  response.result(status);
  response.set(http::field::content_type, "application/json");
  response.body() = dump(body) + "\n";
}

namespace {

namespace fs = std::filesystem;
using asio::use_awaitable;
constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

json error_body(const std::string& code, const std::string& message) {
  json error = json::object();
  error["code"] = code;
  error["message"] = message;
  json body = json::object();
  body["error"] = std::move(error);
  return body;
}

json status_body(const char* status) {
  json body = json::object();
  body["status"] = status;
  return body;
}

/// One HTTP connection: requests in a loop until the client closes, an error,
/// an idle timeout, or a WebSocket upgrade hands the socket over.
class HttpSession : public Connection, public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(std::shared_ptr<ServerCore> server, tcp::socket socket)
      : server_(std::move(server)), stream_(std::move(socket)), slot_(server_->metrics) {}

  void start() {
    id_ = server_->add_connection(shared_from_this());
    asio::co_spawn(stream_.get_executor(), run(shared_from_this()), asio::detached);
  }

  void begin_shutdown(std::string) override {
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      // A keep-alive connection waiting for its next request is closed; a new
      // one still gets its first request answered (503, or /readyz "stopping").
      self->stopping_ = true;
      if (self->reading_ && self->served_ > 0) self->stream_.cancel();
    });
  }
  void cancel(std::string reason) override {
    begin_shutdown(std::move(reason));
    // The grace period is over: a body still arriving is not waited for.
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      if (self->receiving_body_) self->stream_.cancel();
    });
  }

 private:
  static asio::awaitable<void> run(std::shared_ptr<HttpSession> self) {
    co_await self->serve();
    if (!self->upgraded_) self->server_->remove_connection(self->id_);
  }

  asio::awaitable<void> serve() {
    beast::flat_buffer buffer;
    bool more = true;
    while (more)
      more = co_await serve_one(buffer);
  }

  /// Reads one request's header, then its body: into a string (JSON and
  /// everything else), or into shared memory (a binary /v1 process body).
  /// False when the connection is done.
  asio::awaitable<bool> serve_one(beast::flat_buffer& buffer) {
    if (stopping_ && served_ > 0) co_return false;
    http::request_parser<http::empty_body> head;
    head.header_limit(16 * 1024);
    head.body_limit(boost::none);  // each kind of body has its own limit, checked below
    stream_.expires_after(server_->options.idle_timeout);
    reading_ = true;
    const std::tuple<error_code, std::size_t> read =
        co_await http::async_read_header(stream_, buffer, head, tuple_awaitable);
    reading_ = false;
    const error_code ec = std::get<0>(read);
    if (connection_ended(ec)) co_return false;
    if (ec) {
      co_await refuse_malformed(ec);
      co_return false;
    }
    const auto& header = head.get();
    const auto name = process_graph_name(split_target(header.target()).first);
    if (header.method() == http::verb::post && name &&
        !json_content_type(header[http::field::content_type]))
      co_return co_await serve_upload(buffer, head);
    co_return co_await serve_buffered(buffer, head);
  }

  static bool connection_ended(const error_code& ec) {
    return ec == http::error::end_of_stream || ec == asio::error::operation_aborted ||
           ec == beast::error::timeout || ec == asio::error::connection_reset ||
           ec == asio::error::eof;
  }

  /// Answers a request that could not be read, and ends the connection.
  asio::awaitable<void> refuse_malformed(const error_code& ec) {
    Response response;
    response.version(11);
    Request none;
    if (ec == http::error::body_limit) {
      refuse_too_large(response);
    } else if (ec == http::error::header_limit) {
      server_->refuse(none, response, http::status::request_header_fields_too_large,
                      "http.header_too_large", "the request header is over 16 KiB");
    } else {
      server_->refuse(none, response, http::status::bad_request, "http.malformed",
                      "malformed HTTP request: " + ec.message());
    }
    response.keep_alive(false);
    co_await write(response);
  }

  void refuse_too_large(Response& response) {
    server_->refuse(Request{}, response, http::status::payload_too_large, "http.body_too_large",
                    "the body is over " + std::to_string(server_->options.max_frame) +
                        " bytes (plumber serve's --max-frame)");
  }

  /// Sends `100 Continue` when the client waits for it before sending its body.
  asio::awaitable<bool> continue_if_expected(const Request::header_type& header) {
    if (!expects_continue(header[http::field::expect])) co_return true;
    http::response<http::empty_body> go_on{http::status::continue_, header.version()};
    stream_.expires_after(std::chrono::seconds(30));
    const std::tuple<error_code, std::size_t> written =
        co_await http::async_write(stream_, go_on, tuple_awaitable);
    co_return !std::get<0>(written);
  }

  /// After a refusal written before the body was read: drops what the
  /// client still sends (shutdown may cut it short), then the connection ends.
  asio::awaitable<void> discard_body(std::uint64_t unread) {
    reading_ = true;
    co_await discard_unread(stream_, std::chrono::seconds(5), unread);
    reading_ = false;
  }

  /// A request whose body (JSON, or none) is read whole into a string, at
  /// most --max-frame bytes.
  asio::awaitable<bool> serve_buffered(beast::flat_buffer& buffer,
                                       http::request_parser<http::empty_body>& head) {
    const auto length = head.content_length();
    if (length && *length > server_->options.max_frame) {
      Response response;
      response.version(11);
      refuse_too_large(response);
      response.keep_alive(false);
      const std::uint64_t unread = *length;
      if (co_await write(response)) co_await discard_body(unread);
      co_return false;
    }
    http::request_parser<http::string_body> parser(std::move(head));
    parser.body_limit(server_->options.max_frame);
    if (!parser.is_done()) {
      if (!co_await continue_if_expected(parser.get())) co_return false;
      stream_.expires_after(server_->options.idle_timeout);
      const std::tuple<error_code, std::size_t> read =
          co_await http::async_read(stream_, buffer, parser, tuple_awaitable);
      const error_code ec = std::get<0>(read);
      if (connection_ended(ec)) co_return false;
      if (ec) {
        co_await refuse_malformed(ec);
        co_return false;
      }
    }
    Request request = parser.release();
    Response response;
    response.version(11);
    const auto [path, query] = split_target(request.target());
    if (path == "/ws" && beast::websocket::is_upgrade(request)) {
      if (!server_->admit(request, response)) {
        response.keep_alive(false);
        co_await write(response);
        co_return false;
      }
      if (server_->stopping()) {
        server_->refuse(request, response, http::status::service_unavailable,
                        "server.shutting_down", server_->stop_reason());
        response.keep_alive(false);
        co_await write(response);
        co_return false;
      }
      upgraded_ = true;
      stream_.expires_never();
      co_await run_websocket(server_, std::move(stream_), std::move(request), std::move(slot_),
                             id_);
      co_return false;
    }
    ++served_;
    co_await server_->handle(request, response);
    co_return co_await finish(request, response);
  }

  /// POST /v1/graphs/NAME/process with binary data: checked before its body
  /// is read, then the body goes from the socket straight into shared memory.
  asio::awaitable<bool> serve_upload(beast::flat_buffer& buffer,
                                     http::request_parser<http::empty_body>& head) {
    ++served_;
    std::optional<std::uint64_t> length;
    if (head.content_length()) length = *head.content_length();
    const bool chunked = head.chunked();
    const std::uint64_t unread = length.value_or(server_->options.max_upload_bytes);
    const Request request = take_header(head);
    Response response;
    std::optional<ServerCore::Upload> upload =
        server_->begin_upload(request, length, chunked, response);
    if (!upload) {
      // Not a coroutine refuse_unread(Response&, std::uint64_t) doing both
      // steps: g++ 12 built that one with a frame that was garbage when first
      // resumed (SIGILL, or SIGSEGV on the reference).
      response.keep_alive(false);
      if (co_await write(response)) co_await discard_body(unread);
      co_return false;
    }
    if (!co_await continue_if_expected(request.base())) co_return false;
    receiving_body_ = true;
    // Named, not a temporary around co_await (g++ 12).
    const BodyRead body =
        co_await read_body(stream_, buffer, upload->bytes.bytes(), server_->options.idle_timeout);
    receiving_body_ = false;
    if (!co_await server_->end_upload(request, *upload, body, response)) co_return false;
    co_return co_await finish(request, response);
  }

  /// The request a header parser has read, without a body. Outside the
  /// coroutine: g++ 12 may destroy a temporary inside one early, or twice.
  static Request take_header(http::request_parser<http::empty_body>& head) {
    http::request<http::empty_body> message = head.release();
    return Request(std::move(message.base()));
  }

  /// Writes the answer to a request that was read whole; whether the
  /// connection goes on.
  asio::awaitable<bool> finish(const Request& request, Response& response) {
    const bool keep_alive = request.keep_alive() && !stopping_ && !server_->stopping();
    response.keep_alive(keep_alive);
    response.prepare_payload();
    if (!co_await write(response) || !keep_alive) {
      error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      co_return false;
    }
    co_return true;
  }

  /// Writes a response; false when the connection failed.
  asio::awaitable<bool> write(Response& response) {
    response.set(http::field::server, "plumber");
    response.prepare_payload();
    stream_.expires_after(std::chrono::seconds(30));
    const std::tuple<error_code, std::size_t> written =
        co_await http::async_write(stream_, response, tuple_awaitable);
    co_return !std::get<0>(written);
  }

  std::shared_ptr<ServerCore> server_;
  beast::tcp_stream stream_;
  ConnectionSlot slot_;
  std::uint64_t id_ = 0;
  std::uint64_t served_ = 0;
  bool reading_ = false;
  bool receiving_body_ = false;
  bool stopping_ = false;
  bool upgraded_ = false;
};

}  // namespace

// --- ServerCore ------------------------------------------------------------

ServerCore::ServerCore(const Registry& registry_, asio::any_io_executor executor,
                       ServerOptions options_)
    : registry(registry_),
      options(std::move(options_)),
      executor_(executor),
      strand_(asio::make_strand(executor)),
      acceptor_(strand_),
      grace_timer_(strand_) {
  limits.max_nodes = options.max_nodes;
  limits.max_threads = options.max_threads;
  if (!options.allow_files.empty()) limits.allow_files = fs::path(options.allow_files);
  check_edit_options();
  load_catalog();

  listen();
  // Last: nothing may throw once the threads run (a joinable thread must not be destroyed).
  pipeline_work_.emplace(pipeline_io_.get_executor());
  std::lock_guard lock(pipeline_mutex_);
  for (std::size_t i = 0; i < std::max<std::size_t>(1, options.pipeline_threads); ++i)
    start_pipeline_thread();
}

void ServerCore::start_pipeline_thread() {
  ++pipeline_running_;
  pipeline_threads_.emplace_back([this] {
    pipeline_io_.run();
    std::lock_guard lock(pipeline_mutex_);
    --pipeline_running_;
    pipeline_exited_.notify_all();
  });
}

void ServerCore::replace_stuck_pipeline_thread() {
  std::lock_guard lock(pipeline_mutex_);
  if (!pipeline_work_ || stopping_) return;  // shutting down: nothing new runs
  if (replacement_threads_ >= std::max<std::size_t>(1, options.pipeline_threads)) {
    spdlog::warn(
        "a step that never returns holds a pipeline thread; no more are started "
        "({} already replace such threads)",
        replacement_threads_);
    return;
  }
  ++replacement_threads_;
  start_pipeline_thread();
  spdlog::info("a step that never returns holds a pipeline thread: started another");
}

void ServerCore::listen() {
  // Error codes, not Asio's throwing calls: their text names a Boost source file.
  error_code ec;
  const auto address = asio::ip::make_address(options.bind, ec);
  if (ec) throw std::system_error(ec, "--bind " + options.bind + ": not an IP address");
  const tcp::endpoint endpoint(address, options.port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    const std::string host = address.is_v6() ? "[" + options.bind + "]" : options.bind;
    throw std::system_error(ec, "cannot listen on " + host + ":" + std::to_string(options.port));
  }
}

ServerCore::~ServerCore() {
  for (auto& service : all_services())
    service->pipeline->stop(false);
  if (!wait_pipelines(std::chrono::seconds(5))) {
    spdlog::warn("a step of a served graph still runs; stopping its threads anyway");
  }
  pipeline_io_.stop();
  for (auto& t : pipeline_threads_)
    t.join();  // blocks while a synchronous step runs: it cannot be interrupted
}

bool ServerCore::wait_pipelines(std::chrono::milliseconds limit) {
  std::unique_lock lock(pipeline_mutex_);
  pipeline_work_.reset();
  return pipeline_exited_.wait_for(lock, limit, [this] { return pipeline_running_ == 0; });
}

std::optional<std::pair<std::string, std::string>> ServerCore::reserve_run(std::size_t procs,
                                                                           bool count_run) {
  if (count_run && ++total_runs_ > options.max_total_runs) {
    --total_runs_;
    return std::pair<std::string, std::string>(
        "server.too_many_runs", "the server runs " + std::to_string(options.max_total_runs) +
                                    " graphs at once (--max-total-runs); try again later");
  }
  if ((total_procs_ += procs) > options.max_total_procs) {
    total_procs_ -= procs;
    if (count_run) --total_runs_;
    return std::pair<std::string, std::string>(
        "server.too_many_procs", "the graph needs " + std::to_string(procs) +
                                     " worker processes, and the server has no more than " +
                                     std::to_string(options.max_total_procs) +
                                     " in all (--max-total-procs); try again later");
  }
  return std::nullopt;
}

void ServerCore::release_run(std::size_t procs, bool count_run) {
  total_procs_ -= procs;
  if (count_run) --total_runs_;
}

void ServerCore::check_total_send_queue() {
  const std::int64_t limit = static_cast<std::int64_t>(options.max_total_send_queue);
  if (metrics.send_queue_bytes.load() <= limit) return;
  std::shared_ptr<Connection> slowest;
  std::size_t most = 0;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, weak] : connections_) {
      auto c = weak.lock();
      const std::size_t queued = c ? c->queued_bytes() : 0;
      if (queued > most) {
        most = queued;
        slowest = std::move(c);
      }
    }
  }
  if (slowest) {
    slowest->close_for("the server's send queues are full (--max-total-send-queue " +
                       std::to_string(options.max_total_send_queue) +
                       " bytes), and this client has the most queued: " + std::to_string(most) +
                       " bytes");
  }
}

void ServerCore::start() {
  start_services();
  asio::co_spawn(strand_, accept(), asio::detached);
  // Watched before start() returns: a file written once the server says it
  // listens is seen.
  if (!options.graphs_dir.empty() && options.watch_graphs) open_catalog_watch();
  if (inotify_) asio::co_spawn(strand_, watch_catalog(), asio::detached);
}

asio::awaitable<void> ServerCore::accept() {
  auto self = shared_from_this();
  for (;;) {
    auto socket_strand = asio::make_strand(executor_);
    std::tuple<error_code, tcp::socket> accepted =
        co_await acceptor_.async_accept(socket_strand, tuple_awaitable);
    const error_code ec = std::get<0>(accepted);
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      // Out of file descriptors, mostly: wait a little rather than spin.
      spdlog::warn("accept: {}", ec.message());
      asio::steady_timer pause(strand_, std::chrono::milliseconds(50));
      co_await pause.async_wait(tuple_awaitable);
      continue;
    }
    ++metrics.connections_total;
    tcp::socket socket = std::move(std::get<1>(accepted));
    if (static_cast<std::size_t>(metrics.connections.load()) >= options.max_connections) {
      ++metrics.connections_refused;
      asio::co_spawn(socket.get_executor(), refuse_connection(std::move(socket)), asio::detached);
      continue;
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    std::make_shared<HttpSession>(self, std::move(socket))->start();
  }
}

asio::awaitable<void> ServerCore::refuse_connection(tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  Response response{http::status::service_unavailable, 11};
  Request none;
  refuse(none, response, http::status::service_unavailable, "server.too_many_connections",
         "the server holds its maximum of " + std::to_string(options.max_connections) +
             " connections (plumber serve's --max-connections)");
  response.set(http::field::retry_after, "1");
  response.keep_alive(false);
  response.prepare_payload();
  stream.expires_after(std::chrono::seconds(2));
  co_await http::async_write(stream, response, tuple_awaitable);
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
}

std::uint64_t ServerCore::add_connection(const std::shared_ptr<Connection>& connection) {
  bool tell = false;
  std::string reason;
  std::uint64_t id = 0;
  {
    std::lock_guard lock(mutex_);
    id = ++next_connection_;
    connections_.emplace(id, connection);
    tell = stopping_.load();
    reason = stop_reason_;
  }
  if (tell) connection->begin_shutdown(reason);
  return id;
}

void ServerCore::replace_connection(std::uint64_t id,
                                    const std::shared_ptr<Connection>& connection) {
  bool tell = false;
  std::string reason;
  {
    std::lock_guard lock(mutex_);
    connections_[id] = connection;
    tell = stopping_.load();
    reason = stop_reason_;
  }
  if (tell) connection->begin_shutdown(reason);
}

void ServerCore::remove_connection(std::uint64_t id) {
  {
    std::lock_guard lock(mutex_);
    connections_.erase(id);
  }
  if (stopping_) check_stopped();
}

std::string ServerCore::stop_reason() const {
  std::lock_guard lock(mutex_);
  return stop_reason_;
}

void ServerCore::shutdown(std::string reason) {
  asio::post(strand_, [self = shared_from_this(), reason = std::move(reason)] {
    std::vector<std::shared_ptr<Connection>> live;
    bool first = false;
    {
      std::lock_guard lock(self->mutex_);
      first = !self->stopping_.exchange(true);
      if (first) self->stop_reason_ = reason;
      for (auto& [id, weak] : self->connections_) {
        if (auto c = weak.lock()) live.push_back(std::move(c));
      }
    }
    if (!first) {
      spdlog::info("shutdown: {}; cancelling what still runs", reason);
      self->cancel_everything(reason + "; the grace period was cut short");
      return;
    }
    if (self->inotify_) {
      error_code ignored;
      self->inotify_->close(ignored);
    }
    // The listener stays open until everything has closed: new connections
    // are told why they get no new work (503), and /readyz says "stopping".
    spdlog::info("shutdown: {}; grace period {} ms", reason, self->options.grace.count());
    for (auto& c : live)
      c->begin_shutdown(reason);
    for (auto& service : self->all_services())
      service->pipeline->end_input();
    self->grace_timer_.expires_after(self->options.grace);
    self->grace_timer_.async_wait([self, reason](error_code ec) {
      if (!ec) self->cancel_everything(reason + "; the grace period is over");
    });
    self->check_stopped();
  });
}

void ServerCore::cancel_everything(const std::string& reason) {
  std::vector<std::shared_ptr<Connection>> live;
  {
    std::lock_guard lock(mutex_);
    cancelled_ = true;
    for (auto& [id, weak] : connections_) {
      if (auto c = weak.lock()) live.push_back(std::move(c));
    }
  }
  for (auto& c : live)
    c->cancel(reason);
  for (auto& service : all_services())
    service->pipeline->stop(false);
  check_stopped();  // it no longer waits for the services (a step may never return)
}

void ServerCore::check_stopped() {
  asio::post(strand_, [self = shared_from_this()] {
    bool cancelled = false;
    {
      std::lock_guard lock(self->mutex_);
      if (!self->stopping_ || self->stopped_ || !self->connections_.empty()) return;
      cancelled = self->cancelled_;
    }
    const auto services = self->all_services();
    for (auto& service : services) {
      if (!service->done && !cancelled) return;
    }
    {
      std::lock_guard lock(self->mutex_);
      self->stopped_ = true;
    }
    self->grace_timer_.cancel();
    error_code ignored;
    self->acceptor_.close(ignored);
    for (auto& service : services)
      self->metrics.finished(service->metrics_key, "completed");
    if (self->stopped_handler) self->stopped_handler();
  });
}

GraphSpec ServerCore::load_submitted(const json& document) const {
  auto too_big = check_graph_size(document, limits);
  if (!too_big.empty()) throw GraphError("<submitted>", std::move(too_big));
  GraphSpec spec = graph_from_json(document, registry, "<submitted>");
  apply_graph_policy(spec, limits);
  return spec;
}

std::string ServerCore::nearest_graph(std::string_view) const {
  std::string names;
  for (const auto& entry : graphs())
    names += (names.empty() ? "" : ", ") + entry->name;
  if (names.empty()) return "this server has no named graphs (plumber serve --graphs DIR)";
  return "named graphs: " + names;
}

void ServerCore::refuse(const Request& request, Response& response, http::status status,
                        const std::string& code, const std::string& message) {
  // The path only: a query may hold the token.
  const auto path = split_target(request.target()).first;
  const bool serious = status == http::status::unauthorized || status == http::status::forbidden ||
                       static_cast<unsigned>(status) >= 500;
  std::string what(request.method_string());
  if (!path.empty()) what += " " + std::string(path);
  spdlog::log(serious ? spdlog::level::warn : spdlog::level::info, "refused {}{}{} {}: {}", what,
              what.empty() ? "" : ": ", static_cast<unsigned>(status), code, message);
  set_json(response, status, error_body(code, message));
}

bool ServerCore::admit(const Request& request, Response& response) {
  const auto [path, query] = split_target(request.target());
  if (!options.token.empty() && path != "/healthz") {
    bool ok = false;
    auto authorization = request.find(http::field::authorization);
    if (authorization != request.end()) {
      std::string_view value = authorization->value();
      if (auto token = bearer_token(value)) ok = same_secret(*token, options.token);
    }
    if (!ok) {
      if (auto token = query_param(query, "token")) ok = same_secret(*token, options.token);
    }
    if (!ok) {
      refuse(request, response, http::status::unauthorized, "http.unauthorized",
             "this server needs a token: \"Authorization: Bearer TOKEN\" or ?token=TOKEN");
      response.set(http::field::www_authenticate, "Bearer");
      return false;
    }
  }
  // A web page from another site may not drive this server through a visitor's
  // browser (cross-site WebSocket hijacking, simple POSTs): a browser always
  // sends Origin on those, other clients mostly do not.
  auto origin = request.find(http::field::origin);
  const bool needs_origin_check =
      request.method() != http::verb::get || beast::websocket::is_upgrade(request);
  if (needs_origin_check && origin != request.end()) {
    auto host = request.find(http::field::host);
    if (host == request.end() || origin_host(origin->value()) != host->value()) {
      refuse(
          request, response, http::status::forbidden, "http.cross_origin",
          "requests from another origin are refused (Origin " + std::string(origin->value()) + ")");
      return false;
    }
  }
  return true;
}

asio::awaitable<void> ServerCore::handle(const Request& request, Response& response) {
  response.version(request.version());
  response.set(http::field::cache_control, "no-store");
  if (!admit(request, response)) {
    metrics.count_http(response.result_int());
    co_return;
  }
  const auto [path, query] = split_target(request.target());
  const http::verb method = request.method();
  auto only = [&](http::verb allowed, const char* allow) {
    if (method == allowed) return true;
    refuse(request, response, http::status::method_not_allowed, "http.method_not_allowed",
           std::string(request.method_string()) + " is not allowed on " + std::string(path));
    response.set(http::field::allow, allow);
    return false;
  };

  if (path == "/" || path == "/index.html") {
    if (only(http::verb::get, "GET")) {
      response.result(http::status::ok);
      response.set(http::field::content_type, "text/html; charset=utf-8");
      response.set("X-Content-Type-Options", "nosniff");
      response.body() = std::string(web_page());
    }
  } else if (path == "/healthz") {
    if (only(http::verb::get, "GET")) set_json(response, http::status::ok, status_body("ok"));
  } else if (path == "/readyz") {
    if (only(http::verb::get, "GET")) {
      if (stopping()) {
        json body = status_body("stopping");
        body["reason"] = stop_reason();
        set_json(response, http::status::service_unavailable, body);
      } else {
        set_json(response, http::status::ok, status_body("ready"));
      }
    }
  } else if (path == "/metrics") {
    if (only(http::verb::get, "GET")) {
      response.result(http::status::ok);
      response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      response.body() = metrics.render();
    }
  } else if (path == "/ws") {
    refuse(request, response, http::status::upgrade_required, "http.upgrade_required",
           "/ws is a WebSocket endpoint (docs/protocol.md)");
    response.set(http::field::upgrade, "websocket");
  } else if (path == "/v1/coroutines") {
    if (only(http::verb::get, "GET")) set_json(response, http::status::ok, palette_json(registry));
  } else if (path == "/v1/validate") {
    if (only(http::verb::post, "POST")) {
      try {
        set_json(response, http::status::ok,
                 validation_json(detail::parse_json(request.body()), registry, limits));
      } catch (const detail::JsonParseError& e) {
        refuse(request, response, http::status::bad_request, "http.bad_request",
               "the body is not JSON: " + std::string(e.what()));
      }
    }
  } else if (path == "/v1/graphs") {
    if (only(http::verb::get, "GET")) {
      json graphs = json::array();
      for (const auto& entry : this->graphs()) {
        json one = graph_shape(entry->name, entry->spec);
        one["description"] = entry->description;
        one["version"] = entry->version;
        one["process"] = find_service(entry->name) != nullptr;
        graphs.push_back(std::move(one));
      }
      json body = json::object();
      body["graphs"] = std::move(graphs);
      body["edits"] = options.allow_edits;
      set_json(response, http::status::ok, body);
    }
  } else if (path.starts_with("/v1/graphs/")) {
    std::string_view rest = path.substr(std::string_view("/v1/graphs/").size());
    const auto slash = rest.find('/');
    const std::string_view name = rest.substr(0, slash);
    const std::string_view action =
        slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
    const auto entry = valid_graph_name(name) ? find_graph(name) : nullptr;
    if (action.empty() && (method == http::verb::put || method == http::verb::delete_)) {
      edit_graph(request, response, name);
    } else if (action.empty() || action == "/process") {
      if (!entry) {
        refuse(request, response, http::status::not_found, "graph.unknown_name",
               "no graph named \"" + std::string(name) + "\" (" + nearest_graph(name) + ")");
      } else if (action.empty()) {
        if (only(http::verb::get, "GET")) set_json(response, http::status::ok, entry->document);
      } else if (only(http::verb::post, "POST")) {
        auto service = find_service(name);
        if (!service) {
          refuse(request, response, http::status::conflict, "graph.no_input",
                 "graph \"" + std::string(name) +
                     "\" has no `input` source, so it cannot process a request");
        } else {
          co_await process(request, response, std::move(service));
        }
      }
    } else {
      refuse(request, response, http::status::not_found, "http.not_found",
             "nothing at " + std::string(path));
    }
  } else {
    refuse(request, response, http::status::not_found, "http.not_found",
           "nothing at " + std::string(path) +
               " (try /, /ws, /v1/graphs, /metrics, /healthz, /readyz)");
  }
  metrics.count_http(response.result_int());
}

namespace {

/// The status and error code of a failed process request.
std::pair<http::status, std::string> process_failure(const boost::system::error_code& ec) {
  if (ec == errc::timed_out) return {http::status::gateway_timeout, "process.timed_out"};
  if (ec == errc::step_failed) return {http::status::unprocessable_entity, "process.step_failed"};
  if (ec == errc::cancelled) return {http::status::service_unavailable, "process.cancelled"};
  return {http::status::service_unavailable, "process.pipeline_stopped"};
}

/// A successful /v1 process response. A result that carries binary data is
/// {"value", "blobs": [{"size", "sha256"}]}, or, when the client's Accept names
/// the first blob's type (the value's "content_type", else
/// application/octet-stream), that blob's bytes as the body.
void set_result(const Request& request, Response& response, const ProcessResult& result) {
  std::vector<Blob> blobs;
  for (const OutputRecord& record : result.outputs)
    blobs.insert(blobs.end(), record.blobs.begin(), record.blobs.end());
  if (blobs.empty()) {
    set_json(response, http::status::ok, result.value());
    return;
  }
  std::string type = "application/octet-stream";
  for (const OutputRecord& record : result.outputs) {
    if (record.blobs.empty()) continue;
    if (record.value.is_object() && record.value.contains("content_type") &&
        record.value["content_type"].is_string())
      type = record.value["content_type"].get<std::string>();
    break;
  }
  const std::string_view accept = request[http::field::accept];
  const std::string media_type = type.substr(0, type.find(';'));
  if (!accept.empty() && accept.find(media_type) != std::string_view::npos) {
    response.result(http::status::ok);
    response.set(http::field::content_type, type);
    response.body().assign(reinterpret_cast<const char*>(blobs.front().data()),
                           blobs.front().size());
    return;
  }
  json body = json::object();
  body["value"] = result.value();
  body["blobs"] = blob_descriptions(blobs);
  set_json(response, http::status::ok, body);
}

json process_error_body(const ProcessResult& failed, const std::string& code) {
  json body = error_body(code, failed.error);
  if (!failed.node.empty()) body["error"]["node"] = failed.node;
  return body;
}

}  // namespace

std::shared_ptr<Service> ServerCore::successor(const boost::system::error_code& ec,
                                               const Service& service) const {
  if (ec != errc::pipeline_stopped || !service.retired || stopping()) return nullptr;
  auto current = find_service(service.name);
  return current.get() == &service ? nullptr : current;
}

std::optional<ProcessOptions> ServerCore::process_params(std::string_view query,
                                                         std::string& bad) const {
  const auto timeout_ms =
      integer_param(query, "timeout_ms", options.process_timeout.count(), 1, 3'600'000, bad);
  const auto priority = integer_param(query, "priority", 0, 0, 255, bad);
  if (!timeout_ms || !priority) return std::nullopt;
  return ProcessOptions{std::chrono::milliseconds(*timeout_ms),
                        static_cast<std::uint8_t>(*priority)};
}

std::optional<ServerCore::Upload> ServerCore::begin_upload(const Request& head,
                                                           std::optional<std::uint64_t> length,
                                                           bool chunked, Response& response) {
  response.version(head.version());
  response.set(http::field::cache_control, "no-store");
  std::optional<Upload> upload;
  if (!admit(head, response)) {
    metrics.count_http(response.result_int());
    return upload;
  }
  const auto [path, query] = split_target(head.target());
  const std::string_view name = process_graph_name(path).value_or("");
  std::shared_ptr<Service> service;
  std::string bad;
  process_params(query, bad);
  if (!valid_graph_name(name) || !find_graph(name)) {
    refuse(head, response, http::status::not_found, "graph.unknown_name",
           "no graph named \"" + std::string(name) + "\" (" + nearest_graph(name) + ")");
  } else if (!(service = find_service(name))) {
    refuse(head, response, http::status::conflict, "graph.no_input",
           "graph \"" + std::string(name) +
               "\" has no `input` source, so it cannot process a request");
  } else if (stopping()) {
    refuse(head, response, http::status::service_unavailable, "server.shutting_down",
           stop_reason());
  } else if (!bad.empty()) {
    refuse(head, response, http::status::bad_request, "http.bad_request", bad);
  } else if (chunked || !length) {
    refuse(head, response, http::status::length_required, "http.length_required",
           "a binary body (Content-Type " + std::string(head[http::field::content_type]) +
               ") needs a Content-Length: it is read straight into shared memory of that size; "
               "chunked bodies are not taken");
  } else if (*length > options.max_upload_bytes) {
    refuse(head, response, http::status::payload_too_large, "http.body_too_large",
           "the body is " + std::to_string(*length) + " bytes, over the limit of " +
               std::to_string(options.max_upload_bytes) +
               " bytes for a binary body (plumber serve's --max-upload-bytes)");
  } else {
    try {
      const auto size = static_cast<std::size_t>(*length);
      upload.emplace(
          Upload{service, allocate_shared_bytes(size), HeldBytes(metrics.upload_bytes_held, size)});
    } catch (const std::bad_alloc&) {
      refuse(head, response, http::status::service_unavailable, "server.no_shared_memory",
             "no room for " + std::to_string(*length) +
                 " bytes in the shared-memory arena now (its size is PLUMBER_ARENA_MB, default "
                 "1024); try again later");
      response.set(http::field::retry_after, "1");
    } catch (const std::exception& e) {
      refuse(head, response, http::status::internal_server_error, "server.shared_memory_failed",
             std::string("cannot allocate shared memory for the body: ") + e.what());
    }
  }
  if (!upload) metrics.count_http(response.result_int());
  return upload;
}

namespace {

json upload_value(std::string_view content_type, std::size_t size) {
  json value = json::object();
  value["content_type"] = std::string(content_type);
  value["size"] = size;
  return value;
}

}  // namespace

asio::awaitable<bool> ServerCore::end_upload(const Request& head, Upload& upload,
                                             const BodyRead& body, Response& response) {
  if (body.ec) {
    ++metrics.uploads_incomplete;
    spdlog::info("POST {}: the body ended after {} of {} bytes ({}); nothing was processed",
                 split_target(head.target()).first, body.received, upload.bytes.size(),
                 body.ec.message());
    co_return false;
  }
  ++metrics.uploads_complete;
  metrics.upload_bytes += body.received;
  metrics.upload_bytes_copied += body.copied;
  Blob blob = hold_blob(std::move(upload.bytes).freeze(), std::move(upload.held));
  co_await process(head, response, std::move(upload.service), std::move(blob));
  metrics.count_http(response.result_int());
  co_return true;
}

asio::awaitable<void> ServerCore::process(const Request& request, Response& response,
                                          std::shared_ptr<Service> service,
                                          std::optional<Blob> upload) {
  const auto started = std::chrono::steady_clock::now();
  const auto [path, query] = split_target(request.target());
  std::string bad;
  const std::optional<ProcessOptions> process_options = process_params(query, bad);
  json value;
  std::vector<Blob> blobs;
  if (upload) {
    value = upload_value(request[http::field::content_type], upload->size());
    blobs.push_back(std::move(*upload));
  } else if (bad.empty()) {
    try {
      value = detail::parse_json(request.body());
    } catch (const detail::JsonParseError& e) {
      bad = "the body is not JSON: " + std::string(e.what());
    }
  }
  if (!bad.empty()) {
    refuse(request, response, http::status::bad_request, "http.bad_request", bad);
  } else if (stopping()) {
    refuse(request, response, http::status::service_unavailable, "server.shutting_down",
           stop_reason());
  } else {
    // Named locals, not temporaries or structured bindings, around co_await (g++ 12).
    std::tuple<boost::system::error_code, ProcessResult> outcome;
    // A reload may retire the service between finding it and feeding it: the
    // value then goes to the version that took its place.
    // (No break or continue past a live local in a coroutine: g++ 12.)
    bool again = true;
    for (int attempt = 0; again && attempt < 2; ++attempt) {
      try {
        json item = value;
        std::vector<Blob> item_blobs = blobs;
        auto operation =
            service->pipeline->async_process(std::move(item), std::move(item_blobs),
                                             *process_options, asio::as_tuple(asio::use_awaitable));
        outcome = co_await std::move(operation);
      } catch (const std::exception& e) {  // a graph without `input`, or ended
        std::get<0>(outcome) = errc::pipeline_stopped;
        std::get<1>(outcome).error = e.what();
      }
      std::shared_ptr<Service> next = successor(std::get<0>(outcome), *service);
      again = next != nullptr;
      if (again) service = std::move(next);
    }
    const boost::system::error_code& ec = std::get<0>(outcome);
    if (!ec) {
      set_result(request, response, std::get<1>(outcome));
    } else {
      const auto [status, code] = process_failure(ec);
      set_json(response, status, process_error_body(std::get<1>(outcome), code));
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  metrics.observe_process(service->name, response.result_int(), seconds);
}

}  // namespace plumber::server

namespace plumber {

// --- Server ------------------------------------------------------------------

Server::Server(const Registry& registry, boost::asio::any_io_executor executor,
               ServerOptions options)
    : core_(std::make_shared<server::ServerCore>(registry, std::move(executor),
                                                 std::move(options))) {}

Server::~Server() = default;

std::uint16_t Server::port() const noexcept {
  server::error_code ec;
  return core_->acceptor_.local_endpoint(ec).port();
}

void Server::start() {
  core_->start();
}

void Server::shutdown(std::string reason) {
  core_->shutdown(std::move(reason));
}

void Server::reload() {
  boost::asio::post(core_->strand_,
                    [core = core_] { core->reload("a reload was asked for (SIGHUP)"); });
}

void Server::on_stopped(std::function<void()> handler) {
  core_->stopped_handler = std::move(handler);
}

bool Server::wait_pipelines(std::chrono::milliseconds limit) {
  return core_->wait_pipelines(limit);
}

}  // namespace plumber
