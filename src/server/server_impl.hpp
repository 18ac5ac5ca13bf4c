#pragma once
/// Internals of `plumber serve` that need Beast, shared by http_session.cpp
/// (HTTP requests: reading, admitting, routing), v1_process.cpp (/v1 process
/// requests), catalog.cpp (the graphs) and ws_session.cpp (the WebSocket
/// protocol). Include it only from src/server/. ServerCore itself, and what
/// server.cpp needs, is in server_core.hpp, without Beast.
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "plumber/worker_pool.hpp"
#include "server/server_core.hpp"
#include "server/upload.hpp"

namespace plumber::server {

namespace beast = boost::beast;
static_assert(std::is_same_v<Request, http::request<http::string_body>>);
static_assert(std::is_same_v<Response, http::response<http::string_body>>);

/// A catalog graph's name: letters, digits, '_', '-', '.', not starting with '.'.
bool valid_graph_name(std::string_view name);
/// Fills `response` with `status` and a JSON body.
void set_json(Response& response, http::status status, const json& body);
/// The JSON body of an HTTP error: {"error": {"code", "message"}}.
json error_body(const std::string& code, const std::string& message);

/// The page at `GET /` (src/server/web/index.html, embedded at build time).
std::string_view web_page();

/// A binary /v1 process body on its way in: where it goes, and its bytes.
struct ServerCore::Upload {
  std::shared_ptr<Service> service;
  SharedBytes bytes;  ///< Content-Length bytes in the shared-memory arena
  HeldBytes held;     ///< counts them in plumber_upload_bytes_held while they live
};

/// Runs a WebSocket session on `stream` (its executor is the connection's
/// strand) after the HTTP upgrade `request`; `id` is its connection id.
asio::awaitable<void> run_websocket(std::shared_ptr<ServerCore> server, beast::tcp_stream stream,
                                    Request request, ConnectionSlot slot, std::uint64_t id);

}  // namespace plumber::server
