// Binary request bodies (src/server/upload.hpp) over a real loopback socket:
// read straight into shared memory, short bodies, held-bytes accounting.
#include <atomic>
#include <cstddef>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>

#include "plumber/worker_pool.hpp"
#include "server/upload.hpp"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using plumber::server::BodyRead;

namespace {

std::string pattern(std::size_t size) {
  std::string bytes(size, '\0');
  for (std::size_t i = 0; i < size; ++i)
    bytes[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  return bytes;
}

std::string post(const std::string& body, std::size_t content_length) {
  return "POST /v1/graphs/g/process HTTP/1.1\r\nHost: x\r\nContent-Type: "
         "application/octet-stream\r\nContent-Length: " +
         std::to_string(content_length) + "\r\n\r\n" + body;
}

/// What the server side saw of one connection: the body, how it was read, and
/// the header of the request that followed it on the connection (if any).
struct Received {
  std::string body;
  BodyRead read;
  std::optional<std::string> next_target;
};

/// Accepts one connection, reads a header, then the body with read_body into
/// shared memory; then tries to read the next request's header.
Received serve_one(const std::string& client_sends) {
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  std::thread client([&, port = acceptor.local_endpoint().port()] {
    asio::io_context client_io;
    tcp::socket socket(client_io);
    socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    asio::write(socket, asio::buffer(client_sends));
    socket.shutdown(tcp::socket::shutdown_send);
    // Waits for the server to close, so that nothing is reset under it.
    boost::system::error_code ec;
    char sink[256];
    while (!ec)
      socket.read_some(asio::buffer(sink), ec);
  });
  auto serve = [&]() -> asio::awaitable<Received> {
    Received out;
    beast::tcp_stream stream(co_await acceptor.async_accept(asio::use_awaitable));
    beast::flat_buffer buffer;
    http::request_parser<http::empty_body> head;
    head.body_limit(boost::none);
    co_await http::async_read_header(stream, buffer, head, asio::use_awaitable);
    const std::size_t size = static_cast<std::size_t>(*head.content_length());
    plumber::SharedBytes bytes = plumber::allocate_shared_bytes(size);
    out.read = co_await plumber::server::read_body(stream, buffer, bytes.bytes(),
                                                   std::chrono::seconds(60));
    out.body.assign(reinterpret_cast<const char*>(bytes.data()), out.read.received);
    if (!out.read.ec) {
      http::request_parser<http::empty_body> next;
      const std::tuple<boost::system::error_code, std::size_t> read =
          co_await http::async_read_header(stream, buffer, next,
                                           asio::as_tuple(asio::use_awaitable));
      if (!std::get<0>(read)) out.next_target = std::string(next.get().target());
    }
    co_return out;
  };
  auto result = asio::co_spawn(io, serve(), asio::use_future);
  io.run();
  client.join();
  return result.get();
}

}  // namespace

TEST_CASE("Upload.ReadsTheBodyFromTheSocketIntoSharedMemory") {
  const std::string body = pattern((std::size_t{3} << 20) + 17);
  const Received got = serve_one(post(body, body.size()) + post("x", 1));
  CHECK(!got.read.ec);
  CHECK(got.read.received == body.size());
  CHECK(got.body == body);
  // Only what came in with the header went through the connection's buffer
  // (a read of the header asks for at most 64 KiB).
  CHECK(got.read.copied <= 64 * 1024);
  // The request after it on the same connection is intact.
  CHECK(got.next_target == "/v1/graphs/g/process");
}

TEST_CASE("Upload.BodyShorterThanItsContentLengthEndsWithAnError") {
  const Received got = serve_one(post("only ten..", 1000));
  CHECK(got.read.ec == asio::error::eof);
  CHECK(got.read.received == 10);
  CHECK(got.body == "only ten..");
}

TEST_CASE("Upload.EmptyBody") {
  const Received got = serve_one(post("", 0) + post("", 0));
  CHECK(!got.read.ec);
  CHECK(got.read.received == 0);
  CHECK(got.next_target == "/v1/graphs/g/process");
}

TEST_CASE("Upload.HeldBytesCountUntilTheLastBlobIsGone") {
  std::atomic<std::int64_t> held{0};
  plumber::SharedBytes bytes = plumber::allocate_shared_bytes(1000);
  plumber::server::HeldBytes hold(held, bytes.size());
  CHECK(held == 1000);
  std::optional<plumber::Blob> blob =
      plumber::server::hold_blob(std::move(bytes).freeze(), std::move(hold));
  CHECK(plumber::in_shared_memory(*blob));
  CHECK(blob->size() == 1000);
  plumber::Blob copy = *blob;
  blob.reset();
  CHECK(held == 1000);
  copy = plumber::Blob();
  CHECK(held == 0);
}
