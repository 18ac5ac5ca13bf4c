// An Asio application that embeds Plumber: it registers its own coroutines,
// loads a graph file, starts the pipeline on its io_context, and answers each
// request of a line-based TCP protocol through Pipeline::process.
//
//   plumber_embed_demo GRAPH [PORT]     (PORT 0 or absent: any free port)
//
// It prints `listening on PORT` once ready. Each request is one JSON line:
// a value, or {"value": V, "priority": P, "timeout_ms": T}. Each reply is one
// JSON line: {"result": R} or {"error": "...", "code": "timed_out", "node": "..."}.
#include <cctype>
#include <csignal>
#include <cstdint>
#include <exception>
#include <iostream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "plumber/all.hpp"

namespace asio = boost::asio;
using asio::ip::tcp;
using plumber::json;
using namespace std::chrono_literals;

namespace {

/// The application's own steps: split a string into words; score the words
/// after an asynchronous lookup (a timer standing in for a database call).
void register_app_coroutines(plumber::Registry& registry) {
  plumber::CoroutineOptions tokens;
  tokens.description = "splits a string into lower-case words";
  tokens.accepts = {plumber::ValueTypes::string};
  tokens.emits = {plumber::ValueTypes::array};
  registry.add_function(
      "tokens",
      [](const json& value) {
        json words = json::array();
        std::string word;
        for (char c : value.get<std::string>() + " ") {
          if (std::isalnum(static_cast<unsigned char>(c))) {
            word += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          } else if (!word.empty()) {
            words.push_back(word);
            word.clear();
          }
        }
        return words;
      },
      std::move(tokens));

  plumber::CoroutineOptions score;
  score.description = "scores a list of words after a (simulated) lookup";
  score.accepts = {plumber::ValueTypes::array};
  score.emits = {plumber::ValueTypes::object};
  registry.add_async(
      "score",
      [](json words, const json&) -> asio::awaitable<json> {
        asio::steady_timer lookup(co_await asio::this_coro::executor, 1ms);
        co_await lookup.async_wait(asio::use_awaitable);
        std::int64_t score = 0;
        for (const auto& w : words)
          score += static_cast<std::int64_t>(w.get_ref<const std::string&>().size());
        json result = json::object();
        result["words"] = words.size();
        result["score"] = score;
        co_return result;
      },
      std::move(score));
}

std::string reply_for_error(const boost::system::error_code& ec,
                            const plumber::ProcessResult& failed) {
  json reply = json::object();
  reply["error"] = failed.error;
  reply["code"] = ec.message();
  reply["node"] = failed.node;
  return reply.dump() + "\n";
}

/// Serves one client: one request a line, replies in request order.
asio::awaitable<void> serve(tcp::socket socket, plumber::Pipeline& pipeline) {
  asio::streambuf buffer(1 << 20);  // a line longer than 1 MiB closes the connection
  try {
    for (;;) {
      const std::size_t length =
          co_await asio::async_read_until(socket, buffer, '\n', asio::use_awaitable);
      std::string line(asio::buffers_begin(buffer.data()),
                       asio::buffers_begin(buffer.data()) + static_cast<std::ptrdiff_t>(length));
      buffer.consume(length);
      std::string reply;
      const json request = json::parse(line, nullptr, false);
      if (request.is_discarded()) {
        json error = json::object();
        error["error"] = "request is not JSON";
        reply = error.dump() + "\n";
      } else {
        const bool wrapped = request.is_object() && request.contains("value");
        json value = wrapped ? request["value"] : request;
        plumber::ProcessOptions options;
        options.timeout = std::chrono::milliseconds(
            wrapped ? request.value("timeout_ms", std::int64_t{2000}) : 2000);
        options.priority = static_cast<std::uint8_t>(wrapped ? request.value("priority", 0) : 0);
        // Failures come back as an error_code (and the result says where and
        // what), as with any Asio operation under as_tuple.
        auto operation =
            pipeline.async_process(std::move(value), options, asio::as_tuple(asio::use_awaitable));
        std::tuple<boost::system::error_code, plumber::ProcessResult> outcome =
            co_await std::move(operation);
        if (const auto& ec = std::get<0>(outcome)) {
          reply = reply_for_error(ec, std::get<1>(outcome));
        } else {
          json ok = json::object();
          ok["result"] = std::get<1>(outcome).value();
          reply = ok.dump() + "\n";
        }
      }
      co_await asio::async_write(socket, asio::buffer(reply), asio::use_awaitable);
    }
  } catch (const std::exception&) {
    // The client went away (or sent an over-long line): drop the connection.
  }
}

asio::awaitable<void> accept(tcp::acceptor& acceptor, plumber::Pipeline& pipeline) {
  for (;;) {
    tcp::socket socket = co_await acceptor.async_accept(asio::use_awaitable);
    asio::co_spawn(acceptor.get_executor(), serve(std::move(socket), pipeline), asio::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: plumber_embed_demo GRAPH [PORT]\n";
    return 2;
  }
  try {
    plumber::Registry registry = plumber::Registry::with_builtins();
    register_app_coroutines(registry);
    const plumber::GraphSpec graph = plumber::load_graph_file(argv[1], registry);

    asio::io_context io;
    plumber::Pipeline pipeline = plumber::Plumber(registry).build(graph, io.get_executor());
    pipeline.start();

    const auto port = static_cast<unsigned short>(argc > 2 ? std::stoi(argv[2]) : 0);
    tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), port});
    asio::co_spawn(io, accept(acceptor, pipeline), asio::detached);

    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](auto, int) {
      acceptor.close();
      io.stop();  // ~Pipeline then cancels what is still in flight
    });
    std::cout << "listening on " << acceptor.local_endpoint().port() << std::endl;

    // Two threads on one io_context: the pipeline keeps to its strand.
    std::thread second([&] { io.run(); });
    io.run();
    second.join();
  } catch (const plumber::GraphError& e) {
    for (const auto& d : e.diagnostics())
      std::cerr << d.format(e.file()) << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "plumber_embed_demo: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
