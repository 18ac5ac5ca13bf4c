// One consumer of a remote node's group, on one strand with two broker
// connections: one blocks in XREADGROUP (highest lane first, only while the
// consumer has room for another batch), the other stores results. Each entry
// is one coroutine: its messages whose deadline passed at the broker are not
// run, the others go to the step runner (inline, or the worker pool of
// `--procs`), and one script stores the results in the host's stream and
// acknowledges the entry (results before the acknowledgement, atomically).
// A heartbeat renews the registration, keeps this consumer's entries from
// looking idle, and claims the entries other consumers left idle longer than
// claim_idle_ms (XAUTOCLAIM). Before each run of the step the entry's count of
// runs goes up (a hash on the broker): an entry whose step was started
// max_deliveries times without a result becomes a dead letter and an error
// record, while entries a dead consumer had only read ahead run normally.
#include "remote/remote_consumer.hpp"

#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>

#include "remote/consumer.hpp"

namespace plumber::detail {

using remote_consumer::Consumer;
using remote_consumer::ConsumerCounters;

namespace {

void print_stats(const Consumer& consumer, const NodeSpec& node,
                 const std::optional<WorkerPoolStats>& pool) {
  const ConsumerCounters& c = consumer.counters();
  std::fprintf(stderr, "%-14s %8s %10s %8s %8s %7s %6s %7s  %s\n", "consumer", "entries",
               "messages", "claimed", "expired", "failed", "dead", "reruns", "name");
  std::fprintf(
      stderr, "%-14s %8llu %10llu %8llu %8llu %7llu %6llu %7llu  %s\n", node.id.c_str(),
      static_cast<unsigned long long>(c.entries), static_cast<unsigned long long>(c.messages),
      static_cast<unsigned long long>(c.claimed), static_cast<unsigned long long>(c.expired),
      static_cast<unsigned long long>(c.failed), static_cast<unsigned long long>(c.dead_lettered),
      static_cast<unsigned long long>(c.reruns), consumer.name().c_str());
  if (!pool) return;
  std::string pids;
  for (const auto& one : pool->workers) {
    if (!pids.empty()) pids += ',';
    pids += std::to_string(one.pid);
  }
  std::fprintf(stderr, "%-14s %5s %10s %8s %8s %7s  %s\n", "workers", "procs", "tasks", "batches",
               "restarts", "deaths", "pids");
  std::fprintf(stderr, "%-14s %5zu %10llu %8llu %8llu %7llu  %s\n", node.id.c_str(), pool->procs,
               static_cast<unsigned long long>(pool->tasks_done),
               static_cast<unsigned long long>(pool->batches_done),
               static_cast<unsigned long long>(pool->restarts),
               static_cast<unsigned long long>(pool->deaths), pids.c_str());
}

}  // namespace

int run_consumer(const NodeSpec& node, const RemoteKeys& keys, const BrokerAddress& address,
                 std::size_t priorities, const ConsumerOptions& options) {
  asio::io_context io;
  const Strand strand = asio::make_strand(io.get_executor());
  // The step as this machine runs it: in process, or `procs` worker processes.
  NodeSpec local = node;
  local.remote.reset();
  local.autoscale.reset();
  local.procs = options.procs;
  local.concurrency = 1;
  const RunnerContext context{.node = local,
                              .strand = strand,
                              .priorities = priorities,
                              .worker_start_timeout = options.start_timeout,
                              .graph_name = keys.prefix};
  std::unique_ptr<StepRunner> runner;
  try {
    std::unique_ptr<Transform> step;
    if (options.procs == 0) step = node.info->make_transform(node.params);
    runner = make_step_runner(context, std::move(step));
    runner->launch();
    runner->on_start();
  } catch (const std::exception& e) {
    std::cerr << "plumber worker: node \"" << node.id
              << "\": the step could not start: " << e.what() << '\n';
    return 1;
  }
  // Entries held at once: at least one batch waiting besides each running one
  // (so a worker process never waits for the broker), and about 64 messages
  // for small batches. What it holds, a higher lane cannot overtake.
  const std::size_t running = std::max<std::size_t>(1, options.procs);
  const std::size_t capacity =
      std::max(2 * running, 64 / std::max<std::size_t>(1, node.batch_size));
  Consumer consumer(strand, node, keys, address, *runner, capacity, options.procs);

  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](const boost::system::error_code& ec, int) {
    if (!ec) asio::post(strand, [&] { consumer.stop(); });
  });
  runner->serve([&](asio::awaitable<void> work) {
    asio::co_spawn(strand, std::move(work), [](std::exception_ptr) {});
  });
  int code = 0;
  asio::co_spawn(strand, consumer.run(), [&](std::exception_ptr e) {
    if (e) {
      code = 1;
      consumer.abandon();
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        std::cerr << "plumber worker: node \"" << node.id << "\": " << ex.what() << '\n';
      } catch (...) {
      }
    }
    runner->close();
    signals.cancel();
  });
  io.run();
  if (options.print_stats) print_stats(consumer, node, runner->worker_stats());
  return code;
}

}  // namespace plumber::detail
