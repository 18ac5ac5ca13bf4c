// The WebSocket protocol of `plumber serve` (docs/protocol.md): one session per
// connection, on the connection's strand. A reader coroutine hands client
// frames, in order, to the client's runs (client_runs.cpp); a writer coroutine
// drains the outbox, where the runs queue their frames.
#include <deque>
#include <optional>
#include <string>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket/stream.hpp>

#include "server/client_runs.hpp"
#include "server/protocol.hpp"
#include "server/server_impl.hpp"

namespace plumber::server {
namespace {

namespace websocket = beast::websocket;
constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

class WsSession : public Connection,
                  public RunsHost,
                  public std::enable_shared_from_this<WsSession> {
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
        runs_(server_, *this, id_, ws_.get_executor()) {
    ++server_->metrics.websockets;
  }

  ~WsSession() override {
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
    runs_.cancel_runs("the connection closed");
    closing_ = true;
    runs_.stop_watching();
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
      self->runs_.cancel_runs(reason);
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
      while (behind() && !closing_) {
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
      co_await runs_.handle(text);
    }
  }

  // --- writing -----------------------------------------------------------------

  void send_error(const ProtocolError& error, std::uint64_t run = 0, const json& ref = nullptr) {
    server_->metrics.count_ws_error(error.code);
    send(error_frame(error, run, ref));
  }

  /// Queues a frame made on this strand.
  void send(const json& frame) { push(dump(frame)); }

  void push(std::string frame) override {
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
    if (!behind()) {
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
    runs_.cancel_runs(reason);
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
    runs_.stop_watching();
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

  // --- for the runs (RunsHost) -------------------------------------------------

  bool behind() const override { return queued_bytes_ > server_->options.max_send_queue / 2; }

  asio::awaitable<void> wait_for_room() override {
    while (behind() && !closing_) {
      co_await room_.async_wait(tuple_awaitable);
    }
  }

  bool closing() const override { return closing_; }

  std::optional<std::string> shutting_down() const override {
    if (!shutting_down_) return std::nullopt;
    return shutdown_reason_;
  }

  void no_runs_left() override {
    if (shutting_down_) close(websocket::close_code::going_away, shutdown_reason_);
  }

  std::shared_ptr<void> hold() override { return shared_from_this(); }

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
  std::deque<std::string> outbox_;
  std::size_t queued_bytes_ = 0;               ///< in the outbox or being written
  std::atomic<std::size_t> queued_mirror_{0};  ///< queued_bytes_, for other threads
  bool overflowed_ = false;
  bool shutting_down_ = false;
  bool closing_ = false;
  std::string shutdown_reason_;
  std::optional<websocket::close_reason> close_;
  std::string close_kind_ = "server";
  ClientRuns runs_;
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
