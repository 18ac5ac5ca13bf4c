// `plumber serve`'s /v1 process requests (POST /v1/graphs/NAME/process): a
// JSON value, or a binary body (checked by begin_upload before http_session.cpp
// reads it into shared memory), run through the graph's long-lived pipeline;
// the answer is JSON, or the bytes of the result's first blob.
#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "json_parse.hpp"
#include "plumber/plumber.hpp"
#include "server/http_util.hpp"
#include "server/protocol.hpp"
#include "server/server_impl.hpp"
#include "server/upload.hpp"

namespace plumber::server {

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
