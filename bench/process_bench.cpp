// Request/response through Pipeline::process: requests per second and latency
// percentiles with many concurrent callers, through a 3-node graph
// (input -> a synchronous step -> a sink).
//
//   build/release/bench/plumber_process_bench [--callers N] [--requests N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "plumber/all.hpp"

namespace asio = boost::asio;
using plumber::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kGraph = R"({"plumber": 1, "name": "request_response",
  "settings": {"queue_size": 256},
  "nodes": [{"id": "in", "coroutine": "input"},
            {"id": "double", "coroutine": "double"},
            {"id": "out", "coroutine": "identity"}],
  "edges": [{"from": "in", "to": "double"}, {"from": "double", "to": "out"}]})";

struct Figures {
  double requests_per_second = 0;
  double p50_us = 0, p99_us = 0, max_us = 0;
  std::size_t wrong = 0;
};

Figures run(int threads, int callers, int requests) {
  plumber::Registry registry = plumber::Registry::with_builtins();
  registry.add_function("double", [](const json& v) { return json(v.get<std::int64_t>() * 2); });
  const plumber::GraphSpec graph = plumber::parse_graph(kGraph, registry);
  asio::io_context io;
  plumber::Pipeline pipeline = plumber::Plumber(registry).build(graph, io.get_executor());
  pipeline.start();

  const int per_caller = requests / callers;
  std::vector<std::vector<double>> latencies(static_cast<std::size_t>(callers));
  std::vector<std::size_t> wrong(static_cast<std::size_t>(callers), 0);
  int finished = 0;
  std::mutex mutex;
  const auto started = Clock::now();
  for (int c = 0; c < callers; ++c) {
    asio::co_spawn(
        io,
        [&, c]() -> asio::awaitable<void> {
          auto& mine = latencies[static_cast<std::size_t>(c)];
          mine.reserve(static_cast<std::size_t>(per_caller));
          for (int i = 0; i < per_caller; ++i) {
            const std::int64_t value = static_cast<std::int64_t>(c) * 1'000'000 + i;
            const auto sent = Clock::now();
            plumber::ProcessResult result =
                co_await pipeline.process(json(value), {.timeout = std::chrono::seconds(30)});
            mine.push_back(std::chrono::duration<double, std::micro>(Clock::now() - sent).count());
            if (result.value() != json(2 * value)) ++wrong[static_cast<std::size_t>(c)];
          }
          std::lock_guard lock(mutex);
          if (++finished == callers) pipeline.end_input();
        },
        asio::detached);
  }
  std::vector<std::thread> extra;
  for (int t = 1; t < threads; ++t)
    extra.emplace_back([&] { io.run(); });
  io.run();
  for (auto& t : extra)
    t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();

  std::vector<double> all;
  Figures f;
  for (std::size_t c = 0; c < latencies.size(); ++c) {
    all.insert(all.end(), latencies[c].begin(), latencies[c].end());
    f.wrong += wrong[c];
  }
  std::sort(all.begin(), all.end());
  f.requests_per_second = static_cast<double>(all.size()) / seconds;
  f.p50_us = all[all.size() / 2];
  f.p99_us = all[all.size() * 99 / 100];
  f.max_us = all.back();
  return f;
}

int flag(int argc, char** argv, std::string_view name, int fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == name) return std::atoi(argv[i + 1]);
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const int callers = flag(argc, argv, "--callers", 1000);
  const int requests = flag(argc, argv, "--requests", 500'000);
  std::printf(
      "\nd) Pipeline::process through input -> double -> identity, %d concurrent callers, "
      "%d requests (median of 3 runs by requests/s)\n",
      callers, requests);
  std::printf("  %-28s %12s %10s %10s %10s %s\n", "io_context threads", "requests/s", "p50 us",
              "p99 us", "max us", "wrong");
  for (int threads : {1, 2}) {
    std::vector<Figures> runs;
    run(threads, callers, requests / 10);  // warm-up
    for (int r = 0; r < 3; ++r)
      runs.push_back(run(threads, callers, requests));
    std::sort(runs.begin(), runs.end(), [](const Figures& a, const Figures& b) {
      return a.requests_per_second < b.requests_per_second;
    });
    const Figures& m = runs[1];
    std::printf("  %-28d %12.0f %10.1f %10.1f %10.1f %zu\n", threads, m.requests_per_second,
                m.p50_us, m.p99_us, m.max_us, m.wrong);
  }
  return 0;
}
