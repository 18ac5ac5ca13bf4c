// Remote nodes over Redis Streams (bench/run remote):
//
//   plumber_remote_bench floor --broker URL --messages N --batch B --in-flight M
//     the broker's floor: one hiredis loop issuing the commands a remote node
//     issues (XADD tasks, XREADGROUP, XADD results + XACK + XDEL, XREAD
//     results, XDEL), pipelined, with nothing around them; prints messages/s.
//   plumber_remote_bench worker --graph FILE
//     a `plumber worker` for the graph's node "sq" (run_remote_worker).
//   plumber_remote_bench throughput --graph FILE
//     runs the graph to completion; prints messages/s counted from the moment
//     start() returned (a broker and a worker were ready).
//   plumber_remote_bench latency --graph FILE --requests N
//     Pipeline::process one request at a time through the graph's remote
//     node (workers started by the caller): p50/p99/max round trip.
// All in one binary, so that bench/run remote builds only the library.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "plumber/all.hpp"
#include "remote/redis_client.hpp"

namespace asio = boost::asio;
using plumber::json;
using Clock = std::chrono::steady_clock;
using namespace plumber::detail;

namespace {

std::string option(int argc, char** argv, std::string_view name, std::string fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == name) return argv[i + 1];
  return fallback;
}

// (Appended, not `"i" + std::to_string(k)`: GCC 12 -O3 warns -Wrestrict there.)
std::string field_name(char prefix, long k) {
  std::string name(1, prefix);
  name += std::to_string(k);
  return name;
}

int floor_run(const std::string& url, long messages, long batch, long in_flight) {
  const BrokerAddress address = parse_broker_url(url);
  RedisClient producer(address, std::chrono::milliseconds(5000));
  RedisClient consumer(address, std::chrono::milliseconds(5000));
  const std::string tasks = "floor:tasks", results = "floor:results";
  producer.command({"DEL", tasks, results});
  producer.command({"XGROUP", "CREATE", tasks, "g", "$", "MKSTREAM"});
  const long entries = messages / batch;
  const long window = std::max(1L, in_flight / batch);  // entries outstanding, as the host's
  long sent = 0, done = 0, outstanding = 0;
  std::string last = "0-0";
  const auto started = Clock::now();
  while (done < entries) {
    // Host: tasks up to the window.
    long queued = 0;
    for (; outstanding < window && sent < entries; ++sent, ++outstanding, ++queued) {
      RedisArgs a{
          "XADD", tasks, "*", "r", std::to_string(sent), "h", results, "n", std::to_string(batch)};
      for (long k = 0; k < batch; ++k) {
        a.push_back(field_name('i', k));
        a.push_back(std::to_string(sent * batch + k));
        a.push_back(field_name('v', k));
        a.push_back(std::to_string(sent * batch + k));
      }
      producer.append(a);
    }
    for (; queued > 0; --queued)
      producer.read();
    // Worker: read, answer, acknowledge.
    RedisReply got =
        consumer.command({"XREADGROUP", "GROUP", "g", "c", "COUNT", "64", "STREAMS", tasks, ">"});
    long answered = 0;
    if (got.type == RedisReply::Type::array) {
      for (RedisReply& stream : got.elements) {
        for (RedisReply& entry : stream.elements[1].elements) {
          RedisArgs a{"XADD", results, "*"};
          for (auto& f : entry.elements[1].elements)
            a.push_back(std::move(f.str));
          consumer.append(a);
          consumer.append({"XACK", tasks, "g", entry.elements[0].str});
          consumer.append({"XDEL", tasks, entry.elements[0].str});
          ++answered;
        }
      }
    }
    for (long i = 0; i < answered * 3; ++i)
      consumer.read();
    // Host: results.
    RedisReply back = producer.command({"XREAD", "COUNT", "1024", "STREAMS", results, last});
    if (back.type == RedisReply::Type::array) {
      RedisArgs del{"XDEL", results};
      for (RedisReply& stream : back.elements) {
        for (RedisReply& entry : stream.elements[1].elements) {
          last = entry.elements[0].str;
          del.push_back(last);
          ++done;
          --outstanding;
        }
      }
      if (del.size() > 2) producer.command(del);
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  producer.command({"DEL", tasks, results});
  std::printf("%.0f\n", static_cast<double>(entries * batch) / seconds);
  return 0;
}

int throughput_run(const std::string& file) {
  plumber::Registry registry = plumber::Registry::with_builtins();
  const plumber::GraphSpec graph = plumber::load_graph_file(file, registry);
  asio::io_context io;
  plumber::Pipeline pipeline = plumber::Plumber(registry).build(graph, io.get_executor());
  pipeline.start();
  const auto started = Clock::now();
  io.run();
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  std::uint64_t received = 0;
  for (const auto& s : pipeline.stats())
    if (s.node == "sq") received = s.emitted;
  std::printf("%.0f\n", static_cast<double>(received) / seconds);
  return 0;
}

int latency_run(const std::string& file, int requests) {
  plumber::Registry registry = plumber::Registry::with_builtins();
  const plumber::GraphSpec graph = plumber::load_graph_file(file, registry);
  asio::io_context io;
  plumber::Pipeline pipeline = plumber::Plumber(registry).build(graph, io.get_executor());
  pipeline.start();
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(requests));
  std::size_t wrong = 0;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        for (int i = 0; i < requests; ++i) {
          const auto sent = Clock::now();
          plumber::ProcessResult result =
              co_await pipeline.process(json(i), {.timeout = std::chrono::seconds(30)});
          us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - sent).count());
          if (result.value() != json(i)) ++wrong;
        }
        pipeline.end_input();
      },
      asio::detached);
  io.run();
  std::sort(us.begin(), us.end());
  std::printf("%.1f %.1f %.1f %zu\n", us[us.size() / 2], us[us.size() * 99 / 100], us.back(),
              wrong);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "floor") {
    return floor_run(option(argc, argv, "--broker", "redis://127.0.0.1:6379"),
                     std::atol(option(argc, argv, "--messages", "200000").c_str()),
                     std::atol(option(argc, argv, "--batch", "1").c_str()),
                     std::atol(option(argc, argv, "--in-flight", "256").c_str()));
  }
  if (mode == "worker") {
    plumber::Registry registry = plumber::Registry::with_builtins();
    return plumber::run_remote_worker(
        {.graph = option(argc, argv, "--graph", ""), .node = "sq", .broker = "", .procs = 0},
        registry);
  }
  if (mode == "throughput") return throughput_run(option(argc, argv, "--graph", ""));
  if (mode == "latency") {
    return latency_run(option(argc, argv, "--graph", ""),
                       std::atoi(option(argc, argv, "--requests", "2000").c_str()));
  }
  std::fprintf(stderr, "usage: plumber_remote_bench floor|worker|throughput|latency ...\n");
  return 2;
}
