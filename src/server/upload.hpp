#pragma once
/// Request bodies that are binary data (POST /v1/graphs/NAME/process with a
/// non-JSON Content-Type): read from the socket straight into shared memory,
/// counted while they live, and discarded unread when the request is refused.
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

#include <boost/asio/awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include "plumber/blob.hpp"

namespace plumber::server {

/// How reading a body went.
struct BodyRead {
  boost::system::error_code ec;  ///< set when the body ended early (the client closed, a timeout)
  std::size_t received = 0;      ///< bytes written into the destination
  /// Of them, bytes that had already been read into the connection's buffer
  /// with the header and were copied from there; the others went from the
  /// socket straight into the destination.
  std::size_t copied = 0;
};

/// Fills `into` with the next `into.size()` bytes of `stream`: first those
/// `buffer` already holds (consumed from it), then read by the socket straight
/// into `into`, with no buffer in between. `idle` bounds each wait for bytes,
/// not the whole body.
boost::asio::awaitable<BodyRead> read_body(boost::beast::tcp_stream& stream,
                                           boost::beast::flat_buffer& buffer,
                                           std::span<std::byte> into,
                                           std::chrono::steady_clock::duration idle);

/// After a refusal sent with `Connection: close` before the client's body was
/// read: stops sending, then reads and drops what the client still sends until
/// it closes, `limit` passes, or `max_bytes` were dropped. Closing at once with
/// unread bytes would reset the connection, and the client might lose the
/// refusal before reading it.
boost::asio::awaitable<void> discard_unread(boost::beast::tcp_stream& stream,
                                            std::chrono::steady_clock::duration limit,
                                            std::uint64_t max_bytes);

/// Counts `size` bytes in a gauge for as long as it lives.
class HeldBytes {
 public:
  HeldBytes(std::atomic<std::int64_t>& gauge, std::size_t size)
      : gauge_(&gauge), size_(static_cast<std::int64_t>(size)) {
    *gauge_ += size_;
  }
  HeldBytes(HeldBytes&& other) noexcept : gauge_(other.gauge_), size_(other.size_) {
    other.gauge_ = nullptr;
  }
  HeldBytes& operator=(HeldBytes&&) = delete;
  ~HeldBytes() {
    if (gauge_) *gauge_ -= size_;
  }

 private:
  std::atomic<std::int64_t>* gauge_;
  std::int64_t size_;
};

/// The same bytes as `blob` (no copy), still counted by `held` until the last
/// copy of the returned Blob is gone.
Blob hold_blob(Blob blob, HeldBytes held);

}  // namespace plumber::server
