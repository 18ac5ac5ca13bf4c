// Binary request bodies: straight from the socket into shared memory (see upload.hpp).
#include "server/upload.hpp"

#include <algorithm>
#include <array>
#include <memory>
#include <tuple>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace plumber::server {
namespace {

namespace asio = boost::asio;
using error_code = boost::system::error_code;
constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

// Each socket read asks for at most this much, so that the idle timeout is
// renewed as the body arrives.
constexpr std::size_t kReadChunk = std::size_t{4} << 20;

}  // namespace

asio::awaitable<BodyRead> read_body(boost::beast::tcp_stream& stream,
                                    boost::beast::flat_buffer& buffer, std::span<std::byte> into,
                                    std::chrono::steady_clock::duration idle) {
  BodyRead result;
  const std::size_t early = std::min(buffer.size(), into.size());
  asio::buffer_copy(asio::buffer(into.data(), early), buffer.data());
  buffer.consume(early);
  result.received = result.copied = early;
  while (result.received < into.size()) {
    const std::size_t chunk = std::min(kReadChunk, into.size() - result.received);
    stream.expires_after(idle);
    // A named result, not a structured binding around co_await (g++ 12).
    const std::tuple<error_code, std::size_t> read = co_await asio::async_read(
        stream, asio::buffer(into.data() + result.received, chunk), tuple_awaitable);
    result.received += std::get<1>(read);
    if (std::get<0>(read)) {
      result.ec = std::get<0>(read);
      co_return result;
    }
  }
  co_return result;
}

asio::awaitable<void> discard_unread(boost::beast::tcp_stream& stream,
                                     std::chrono::steady_clock::duration limit,
                                     std::uint64_t max_bytes) {
  error_code ignored;
  stream.socket().shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
  stream.expires_after(limit);
  std::array<char, 64 * 1024> sink;
  std::uint64_t dropped = 0;
  while (dropped < max_bytes) {
    const std::tuple<error_code, std::size_t> read =
        co_await stream.async_read_some(asio::buffer(sink), tuple_awaitable);
    if (std::get<0>(read)) co_return;
    dropped += std::get<1>(read);
  }
}

Blob hold_blob(Blob blob, HeldBytes held) {
  struct Held {
    Blob blob;
    HeldBytes held;
  };
  auto owner = std::make_shared<const Held>(Held{std::move(blob), std::move(held)});
  return Blob(owner, owner->blob.bytes());
}

}  // namespace plumber::server
