// `plumber submit ws://HOST:PORT GRAPH [--input FILE]`: one run on a server.
// One thread runs the io_context (reader, writer and input pump coroutines);
// another reads input lines, which may block on a terminal.
#include "server/client.hpp"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/websocket/stream.hpp>

#include "cli/cli.hpp"
#include "json_parse.hpp"
#include "plumber/error.hpp"
#include "plumber/json.hpp"
#include "server/protocol.hpp"

namespace plumber::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

/// One input line, parsed on the reader thread; `end` closes the stream. No
/// std::string inside: it is a co_await result (g++ 12 moves those bitwise).
struct InputItem {
  json value;
  bool end = false;
};
using InputChannel = asio::experimental::concurrent_channel<void(error_code, InputItem)>;

struct Url {
  std::string host;
  std::string port;
  std::string target;
};

std::optional<Url> parse_url(const std::string& text) {
  const std::string scheme = "ws://";
  if (text.rfind(scheme, 0) != 0) return std::nullopt;
  std::string rest = text.substr(scheme.size());
  Url url;
  const auto slash = rest.find_first_of("/?");
  std::string authority = rest.substr(0, slash);
  url.target = slash == std::string::npos ? "/ws" : rest.substr(slash);
  if (url.target.front() == '?') url.target = "/ws" + url.target;
  const auto colon = authority.rfind(':');
  if (colon == std::string::npos || authority.empty() || authority.back() == ']') {
    url.host = authority;
    url.port = "80";
  } else {
    url.host = authority.substr(0, colon);
    url.port = authority.substr(colon + 1);
  }
  if (url.host.size() > 2 && url.host.front() == '[')
    url.host = url.host.substr(1, url.host.size() - 2);
  if (url.host.empty()) return std::nullopt;
  return url;
}

void write_line(std::FILE* stream, const json& value) {
  std::string line = dump(value);
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stream);
}

class Client {
 public:
  Client(asio::io_context& io, SubmitOptions options, json submit_frame, std::string label)
      : io_(io),
        options_(std::move(options)),
        submit_frame_(std::move(submit_frame)),
        label_(std::move(label)),
        ws_(asio::make_strand(io)),
        writer_wake_(ws_.get_executor()),
        pump_wake_(ws_.get_executor()),
        flusher_(ws_.get_executor()),
        inputs_(ws_.get_executor(), 256) {}

  int exit_code() const { return exit_code_; }
  bool reader_running() const { return reader_thread_ && !reader_done_->load(); }

  asio::awaitable<void> run() {
    co_await session();
    finished_ = true;
    flusher_.cancel();
    writer_wake_.cancel();
    pump_wake_.cancel();
    inputs_.close();
    std::fflush(stdout);
    // Nothing more to do: do not wait for Beast's handshake timer after a refusal.
    io_.stop();
  }

  /// SIGINT/SIGTERM: the first stops the run gracefully, the second cancels it.
  void interrupt() {
    interrupted_ = true;
    if (run_ == 0) {
      exit_code_ = cli::kExitInterrupted;
      beast::get_lowest_layer(ws_).close();
      return;
    }
    json frame = json::object();
    frame["op"] = ++interrupts_ == 1 ? "stop" : "cancel";
    frame["run"] = run_;
    outbox_.push_front(dump(frame));
    writer_wake_.cancel();
  }

 private:
  asio::awaitable<void> session() {
    const auto url = parse_url(options_.url);
    if (!url) {
      std::cerr << "plumber: " << options_.url << ": not a ws://HOST:PORT URL\n";
      exit_code_ = cli::kExitInvalid;
      co_return;
    }
    tcp::resolver resolver(ws_.get_executor());
    const std::tuple<error_code, tcp::resolver::results_type> resolved =
        co_await resolver.async_resolve(url->host, url->port, tuple_awaitable);
    if (std::get<0>(resolved)) {
      std::cerr << "plumber: cannot resolve " << url->host << ": "
                << std::get<0>(resolved).message() << '\n';
      co_return;
    }
    beast::get_lowest_layer(ws_).expires_after(std::chrono::seconds(10));
    const std::tuple<error_code, tcp::endpoint> connected =
        co_await beast::get_lowest_layer(ws_).async_connect(std::get<1>(resolved), tuple_awaitable);
    if (std::get<0>(connected)) {
      std::cerr << "plumber: cannot connect to " << options_.url << ": "
                << std::get<0>(connected).message() << '\n';
      co_return;
    }
    beast::get_lowest_layer(ws_).expires_never();
    ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::client));
    ws_.read_message_max(64 << 20);
    const std::string token = options_.token;
    ws_.set_option(websocket::stream_base::decorator([token](websocket::request_type& request) {
      request.set(beast::http::field::user_agent, "plumber-submit");
      if (!token.empty()) request.set(beast::http::field::authorization, "Bearer " + token);
    }));
    websocket::response_type response;
    const std::string host = url->host + ":" + url->port;
    const std::tuple<error_code> shaken =
        co_await ws_.async_handshake(response, host, url->target, tuple_awaitable);
    if (std::get<0>(shaken)) {
      std::string why = std::get<0>(shaken).message();
      if (response.result_int() != 0 && response.result_int() != 101) {
        why = "HTTP " + std::to_string(response.result_int());
        try {
          why += ": " +
                 detail::parse_json(response.body()).at("error").at("message").get<std::string>();
        } catch (const std::exception&) {
        }
      }
      std::cerr << "plumber: " << options_.url << ": " << why << '\n';
      co_return;
    }
    asio::co_spawn(ws_.get_executor(), write_loop(), asio::detached);
    asio::co_spawn(ws_.get_executor(), flush_loop(), asio::detached);
    send(dump(submit_frame_));
    co_await read_loop();
  }

  asio::awaitable<void> read_loop() {
    beast::flat_buffer buffer;
    for (;;) {
      buffer.clear();
      const std::tuple<error_code, std::size_t> read =
          co_await ws_.async_read(buffer, tuple_awaitable);
      if (std::get<0>(read)) {
        if (!done_) {
          std::string why = std::get<0>(read).message();
          if (ws_.reason().code != websocket::close_code::none) {
            why = "closed by the server (" + std::to_string(ws_.reason().code) + " " +
                  std::string(ws_.reason().reason.c_str()) + ")";
          }
          std::cerr << "plumber: connection lost before the run ended: " << why << '\n';
          exit_code_ = interrupted_ ? cli::kExitInterrupted : cli::kExitRuntimeError;
        }
        co_return;
      }
      json frame;
      try {
        frame = detail::parse_json(beast::buffers_to_string(buffer.data()));
      } catch (const detail::JsonParseError&) {
        continue;
      }
      if (on_frame(frame)) {
        // Done: close politely; the server answers and the read ends.
        const std::tuple<error_code> closed =
            co_await ws_.async_close(websocket::close_code::normal, tuple_awaitable);
        (void)closed;
        co_return;
      }
    }
  }

  /// Handles one server frame; true when the run is over.
  bool on_frame(const json& frame) {
    const std::string type = frame.value("type", std::string());
    if (type == "output") {
      if (options_.records) {
        json record = json::object();
        record["id"] = frame.value("id", json());
        record["node"] = frame.value("node", json());
        record["value"] = frame.value("value", json());
        if (frame.contains("blobs")) record["blobs"] = frame["blobs"];
        write_line(stdout, record);
      } else if (frame.contains("blobs")) {
        // As `plumber run` prints a value with binary data: the value and its blobs.
        json line = json::object();
        line["value"] = frame.value("value", json());
        line["blobs"] = frame["blobs"];
        write_line(stdout, line);
      } else {
        write_line(stdout, frame.value("value", json()));
      }
    } else if (type == "failed") {
      json record = json::object();
      record["id"] = frame.value("id", json());
      record["node"] = frame.value("node", json());
      record["error"] = frame.value("message", json());
      write_line(stderr, record);
      if (frame.value("code", std::string()) == "cancelled") {
        cancelled_ = true;
      } else {
        failed_ = true;
      }
    } else if (type == "accepted") {
      run_ = frame.value("run", std::uint64_t{0});
      const bool has_input = frame.contains("graph") && frame["graph"].value("input", false);
      if (!has_input && !options_.input.empty()) {
        std::cerr << "plumber: " << label_
                  << ": --input feeds the `input` source, and this graph has none\n";
        exit_code_ = cli::kExitInvalid;
        json cancel = json::object();
        cancel["op"] = "cancel";
        cancel["run"] = run_;
        send(dump(cancel));
        usage_error_ = true;
      } else if (has_input) {
        start_input();
      }
    } else if (type == "error") {
      if (run_ == 0) {
        // The submit was refused: a graph error reads as `plumber validate` prints it.
        const std::string code = frame.value("code", std::string());
        if (frame.contains("diagnostics")) {
          for (const auto& d : frame["diagnostics"]) {
            Diagnostic diagnostic{d.value("code", ""), d.value("pointer", ""),
                                  d.value("message", ""), d.value("hint", "")};
            std::cerr << diagnostic.format(label_) << '\n';
          }
        } else {
          Diagnostic diagnostic{code, frame.value("pointer", ""), frame.value("message", ""),
                                frame.value("hint", "")};
          std::cerr << diagnostic.format(label_) << '\n';
        }
        exit_code_ = code.rfind("graph.", 0) == 0 ? cli::kExitInvalid : cli::kExitRuntimeError;
        done_ = true;
        return true;
      }
      write_line(stderr, frame);
      failed_ = true;
    } else if (type == "trace") {
      std::ofstream out(options_.trace, std::ios::binary | std::ios::trunc);
      out << frame.value("trace", json::object()).dump() << '\n';
      if (!out) std::cerr << "plumber: cannot write the trace to " << options_.trace << '\n';
    } else if (type == "shutdown") {
      std::cerr << "plumber: the server is shutting down: " << frame.value("reason", "") << '\n';
    } else if (type == "done") {
      done_ = true;
      const std::string status = frame.value("status", std::string());
      if (options_.stats) print_stats(frame);
      if (status != "completed") {
        if (frame.contains("reason") && !usage_error_) {
          std::cerr << "plumber: run cancelled: " << frame.value("reason", "") << '\n';
        }
        cancelled_ = true;
      }
      if (!usage_error_) {
        exit_code_ = cli::kExitOk;
        if (failed_ || malformed_.load() > 0) exit_code_ = cli::kExitFailed;
        if (cancelled_ || interrupted_) exit_code_ = cli::kExitInterrupted;
      }
      return true;
    }
    return false;
  }

  void print_stats(const json& frame) {
    std::fprintf(stderr, "%-14s %-12s %10s %10s %7s %7s %8s %10s\n", "node", "coroutine",
                 "received", "emitted", "errors", "skipped", "batches", "busy ms");
    for (const auto& s : frame.value("stats", json::array())) {
      std::fprintf(stderr, "%-14s %-12s %10llu %10llu %7llu %7llu %8llu %10.1f\n",
                   s.value("node", "").c_str(), s.value("coroutine", "").c_str(),
                   s.value("received", 0ULL), s.value("emitted", 0ULL), s.value("errors", 0ULL),
                   s.value("skipped", 0ULL) + s.value("expired", 0ULL), s.value("batches", 0ULL),
                   s.value("busy_ms", 0.0));
    }
  }

  /// Starts the thread reading input lines, and the pump that turns them into frames.
  void start_input() {
    reader_done_ = std::make_shared<std::atomic<bool>>(false);
    reader_thread_ = true;
    std::thread([this, path = options_.input, done = reader_done_] {
      std::ifstream file;
      if (!path.empty()) file.open(path);
      std::istream& in = path.empty() ? std::cin : file;
      const std::string label = path.empty() ? "stdin" : path;
      std::string line;
      std::uint64_t number = 0;
      try {
        while (std::getline(in, line)) {
          ++number;
          if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
          InputItem item;
          try {
            item.value = detail::parse_json(line);
          } catch (const detail::JsonParseError& e) {
            json record = json::object();
            record["input"] = label + ":" + std::to_string(number);
            record["error"] = "malformed JSON: " + std::string(e.what());
            write_line(stderr, record);
            ++malformed_;
            continue;
          }
          inputs_.async_send(error_code{}, std::move(item), asio::use_future).get();
        }
        InputItem end;
        end.end = true;
        inputs_.async_send(error_code{}, std::move(end), asio::use_future).get();
      } catch (const std::exception&) {
        // The run ended first.
      }
      done->store(true);
    }).detach();
    asio::co_spawn(ws_.get_executor(), pump_inputs(), asio::detached);
  }

  /// Turns input lines into "input" frames (several values a frame when they
  /// are queued), waiting while the outbox is full.
  asio::awaitable<void> pump_inputs() {
    for (;;) {
      while (outbox_bytes_ > (1u << 20) && !finished_) {
        pump_wake_.expires_at(asio::steady_timer::time_point::max());
        co_await pump_wake_.async_wait(tuple_awaitable);
      }
      if (finished_) co_return;
      std::tuple<error_code, InputItem> received = co_await inputs_.async_receive(tuple_awaitable);
      if (std::get<0>(received)) co_return;
      json values = json::array();
      bool end = std::get<1>(received).end;
      if (!end) values.push_back(std::move(std::get<1>(received).value));
      std::size_t approx = 0;
      while (!end && values.size() < 1024 && approx < (256u << 10) &&
             inputs_.try_receive([&](error_code, InputItem item) {
               if (item.end) {
                 end = true;
               } else {
                 approx += 16;
                 values.push_back(std::move(item.value));
               }
             })) {
      }
      if (!values.empty() && !stopped_input()) {
        json frame = json::object();
        frame["op"] = "input";
        frame["run"] = run_;
        frame["values"] = std::move(values);
        send(dump(frame));
      }
      if (end) {
        if (!stopped_input()) {
          json frame = json::object();
          frame["op"] = "end";
          frame["run"] = run_;
          send(dump(frame));
        }
        co_return;
      }
    }
  }

  bool stopped_input() const { return interrupts_ > 0 || done_; }

  void send(std::string frame) {
    outbox_bytes_ += frame.size();
    outbox_.push_back(std::move(frame));
    writer_wake_.cancel();
  }

  asio::awaitable<void> write_loop() {
    for (;;) {
      while (outbox_.empty() && !finished_) {
        writer_wake_.expires_at(asio::steady_timer::time_point::max());
        co_await writer_wake_.async_wait(tuple_awaitable);
      }
      if (finished_ || done_) co_return;
      std::string frame = std::move(outbox_.front());
      outbox_.pop_front();
      ws_.text(true);
      const std::tuple<error_code, std::size_t> written =
          co_await ws_.async_write(asio::buffer(frame), tuple_awaitable);
      outbox_bytes_ -= frame.size();
      pump_wake_.cancel();
      if (std::get<0>(written)) co_return;
    }
  }

  /// Flushes stdout every 100 ms, so outputs stream.
  asio::awaitable<void> flush_loop() {
    while (!finished_) {
      flusher_.expires_after(std::chrono::milliseconds(100));
      co_await flusher_.async_wait(tuple_awaitable);
      std::fflush(stdout);
    }
  }

  asio::io_context& io_;
  SubmitOptions options_;
  json submit_frame_;
  std::string label_;
  websocket::stream<beast::tcp_stream> ws_;
  asio::steady_timer writer_wake_;
  asio::steady_timer pump_wake_;
  asio::steady_timer flusher_;
  InputChannel inputs_;
  std::deque<std::string> outbox_;
  std::size_t outbox_bytes_ = 0;
  std::uint64_t run_ = 0;
  int interrupts_ = 0;
  bool interrupted_ = false;
  bool done_ = false;
  bool finished_ = false;
  bool failed_ = false;
  bool cancelled_ = false;
  bool usage_error_ = false;
  bool reader_thread_ = false;
  std::shared_ptr<std::atomic<bool>> reader_done_;
  std::atomic<std::uint64_t> malformed_{0};
  int exit_code_ = cli::kExitRuntimeError;
};

}  // namespace

int submit(const SubmitOptions& options) {
  namespace fs = std::filesystem;
  json frame = json::object();
  frame["op"] = "submit";
  std::error_code ec;
  if (fs::is_regular_file(options.graph, ec)) {
    std::ifstream in(options.graph, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    json document;
    try {
      document = detail::parse_json(text.str());
    } catch (const detail::JsonParseError& e) {
      std::cerr << options.graph << ": malformed JSON: " << e.what() << '\n';
      return cli::kExitInvalid;
    }
    frame["graph"] = std::move(document);
  } else if (options.graph.find('/') != std::string::npos || options.graph.ends_with(".json")) {
    std::cerr << "plumber: " << options.graph << ": no such graph file\n";
    return cli::kExitInvalid;
  } else {
    frame["name"] = options.graph;
  }
  if (!options.trace.empty()) {
    // Checked first: a path that cannot be written fails before the run.
    std::ofstream probe(options.trace, std::ios::binary | std::ios::trunc);
    if (!probe) {
      std::cerr << "plumber: cannot write the trace to " << options.trace << ": "
                << std::strerror(errno) << '\n';
      return cli::kExitInvalid;
    }
    frame["trace"] = true;
  }

  static char stdout_buffer[1 << 16];
  std::setvbuf(stdout, stdout_buffer, _IOFBF, sizeof stdout_buffer);
  asio::io_context io(1);
  Client client(io, options, std::move(frame), options.graph);
  asio::signal_set signals(io, SIGINT, SIGTERM);
  std::function<void()> on_signal = [&] {
    signals.async_wait([&](error_code error, int) {
      if (error) return;
      client.interrupt();
      on_signal();
    });
  };
  on_signal();
  asio::co_spawn(io, client.run(), [&](std::exception_ptr error) {
    signals.cancel();
    if (error) {
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& e) {
        std::cerr << "plumber: " << e.what() << '\n';
      }
    }
  });
  io.run();
  std::fflush(stdout);
  if (client.reader_running()) {
    // The input reader is blocked on a terminal that will not close. Not
    // fflush(nullptr): that waits for stdin's lock, which the reader holds.
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(client.exit_code());
  }
  return client.exit_code();
}

}  // namespace plumber::server
