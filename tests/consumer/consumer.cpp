// A program built against an installed Plumber (tests/consumer/run.cmake):
// it registers its own step, runs it in worker processes, calls the pipeline
// from its own Asio coroutine, and starts and stops a server.
//
//   consumer GRAPH    prints the version, then "N -> 3N" for N = 1..5
#include <chrono>
#include <iostream>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <plumber/all.hpp>
#include <plumber/server.hpp>
#include <plumber/version.hpp>

namespace asio = boost::asio;

namespace {

asio::awaitable<void> ask(plumber::Pipeline& pipeline) {
  for (int i = 1; i <= 5; ++i) {
    const plumber::ProcessResult r =
        co_await pipeline.process(i, {.timeout = std::chrono::seconds(60)});
    std::cout << i << " -> " << r.value().dump() << '\n';
  }
  pipeline.end_input();
}

}  // namespace

int main(int argc, char** argv) {
  plumber::Registry registry = plumber::Registry::with_builtins();
  plumber::CoroutineOptions triple;
  triple.description = "triples an integer";
  triple.worker_capable = true;
  registry.add_function(
      "triple", [](const plumber::json& v) { return plumber::json(v.get<int>() * 3); }, triple);
  // The `procs` node re-executes this program as its workers.
  if (auto code = plumber::run_worker_if_requested(registry)) return *code;
  if (argc != 2) {
    std::cerr << "usage: consumer GRAPH\n";
    return 2;
  }
  std::cout << "plumber " << PLUMBER_VERSION_STRING << '\n';

  asio::io_context io;
  plumber::Pipeline pipeline = plumber::Plumber(registry).build(
      plumber::load_graph_file(argv[1], registry), io.get_executor());
  pipeline.start();
  asio::co_spawn(io, ask(pipeline), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
  io.run();

  // plumber::server links too: bind a free port, shut down at once.
  asio::io_context server_io;
  plumber::ServerOptions options;
  options.port = 0;
  plumber::Server server(registry, server_io.get_executor(), options);
  server.start();
  const bool bound = server.port() != 0;
  server.shutdown("the consumer is done");
  server_io.run();
  std::cout << "server on a free port: " << (bound ? "ok" : "no port") << '\n';
  return 0;
}
