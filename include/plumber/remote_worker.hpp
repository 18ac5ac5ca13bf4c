#pragma once
/// `plumber worker`: runs the step of a graph's `remote` node for hosts
/// anywhere, as consumers of the node's Redis Streams consumer group
/// (docs/scale-out.md).
#include <chrono>
#include <cstddef>
#include <string>

namespace plumber {

class Registry;

/// What `plumber worker GRAPH --node ID [--broker URL] [--procs N] [--stats]` asks for.
struct RemoteWorkerOptions {
  std::string graph;   ///< the graph file (the same as the host's)
  std::string node;    ///< id of a node with `remote`
  std::string broker;  ///< empty: the node's broker, settings.broker, or PLUMBER_BROKER
  /// 0: the step runs in the consumer's process; N: in a pool of N worker
  /// processes (as `procs` on a node), fed by the one consumer.
  std::size_t procs = 0;
  /// How long the pool's processes may take to run on_start.
  std::chrono::milliseconds start_timeout{10'000};
  bool stats = false;  ///< print the consumer's and the pool's counters at the end
};

/// Runs one consumer of the node's group until SIGTERM or SIGINT (it finishes
/// the entries it took, then leaves the group). Returns the exit code: 0 after
/// a signal, 1 when the step could not start, 2 for a bad graph, node or broker.
int run_remote_worker(const RemoteWorkerOptions& options, const Registry& registry);

}  // namespace plumber
