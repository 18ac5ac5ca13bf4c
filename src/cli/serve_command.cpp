// `plumber serve`: the socket server until SIGINT/SIGTERM (SIGHUP reloads --graphs).
#include <sys/resource.h>

#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/system/system_error.hpp>

#include "cli/cli.hpp"
#include "log.hpp"
#include "plumber/all.hpp"
#include "plumber/server.hpp"

namespace plumber::cli {
namespace {

/// Thousands of connections need thousands of descriptors: take the hard limit.
void raise_file_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

}  // namespace

int serve(const ServerOptions& options, int threads, const Registry& registry) {
  raise_file_limit();
  boost::asio::io_context io(threads);
  std::unique_ptr<Server> server;
  try {
    server = std::make_unique<Server>(registry, io.get_executor(), options);
  } catch (const GraphError& e) {
    for (const auto& d : e.diagnostics())
      std::cerr << d.format(e.file()) << '\n';
    return kExitInvalid;
  } catch (const std::exception& e) {
    std::cerr << "plumber: serve: " << e.what() << '\n';
    return kExitRuntimeError;
  }

  // SIGHUP reloads --graphs (docs/cli.md, "Changing graphs at run time").
  boost::asio::signal_set signals(io, SIGINT, SIGTERM, SIGHUP);
  std::function<void()> on_signal = [&] {
    signals.async_wait([&](boost::system::error_code ec, int number) {
      if (ec) return;
      if (number == SIGHUP) {
        server->reload();
      } else {
        server->shutdown(number == SIGINT ? "the server received SIGINT"
                                          : "the server received SIGTERM");
      }
      on_signal();
    });
  };
  on_signal();
  // A synchronous step that never returns keeps its pipeline (and what waits
  // for its outputs) alive: once everything else has closed, give the
  // pipelines a moment, then stop the event loop without them.
  std::thread watcher;
  std::mutex mutex;
  std::condition_variable loop_ended;
  bool ended = false;
  server->on_stopped([&] {
    signals.cancel();
    watcher = std::thread([&] {
      std::unique_lock lock(mutex);
      if (!loop_ended.wait_for(lock, std::chrono::seconds(2), [&] { return ended; })) io.stop();
    });
  });
  server->start();

  std::printf("plumber: listening on http://%s:%u (WebSocket /ws, web page /, metrics /metrics)\n",
              options.bind.find(':') != std::string::npos ? ("[" + options.bind + "]").c_str()
                                                          : options.bind.c_str(),
              static_cast<unsigned>(server->port()));
  std::fflush(stdout);
  spdlog::info("listening on {}:{} ({} threads, graphs from {})", options.bind, server->port(),
               threads, options.graphs_dir.empty() ? "nowhere" : options.graphs_dir);

  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i)
    pool.emplace_back([&] { io.run(); });
  io.run();
  for (auto& t : pool)
    t.join();
  {
    std::lock_guard lock(mutex);
    ended = true;
  }
  loop_ended.notify_all();
  if (watcher.joinable()) watcher.join();
  // A synchronous step cannot be interrupted: past a short wait, leave without it.
  if (!server->wait_pipelines(std::chrono::seconds(2))) {
    std::fprintf(stderr, "plumber: a step of a served graph still runs; exiting without it\n");
    std::printf("plumber: stopped\n");
    std::fflush(nullptr);
    std::_Exit(kExitOk);
  }
  spdlog::info("stopped");
  std::printf("plumber: stopped\n");
  return kExitOk;
}

}  // namespace plumber::cli
