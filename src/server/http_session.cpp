// `plumber serve`'s HTTP connections: reading each request (a JSON body into a
// string, a binary /v1 body into shared memory), admitting it (token, Origin),
// routing it, writing the answer; a WebSocket upgrade hands the socket to
// ws_session.cpp. The /v1 process requests themselves are in v1_process.cpp.
#include <algorithm>
#include <cctype>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/websocket/rfc6455.hpp>

#include "json_parse.hpp"
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

json error_body(const std::string& code, const std::string& message) {
  json error = json::object();
  error["code"] = code;
  error["message"] = message;
  json body = json::object();
  body["error"] = std::move(error);
  return body;
}

namespace {

constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

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

// --- connections --------------------------------------------------------------------

void start_http_session(std::shared_ptr<ServerCore> server, tcp::socket socket) {
  std::make_shared<HttpSession>(std::move(server), std::move(socket))->start();
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

// --- admitting and routing ------------------------------------------------------------

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
}  // namespace plumber::server
