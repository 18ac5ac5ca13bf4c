#pragma once
/// `plumber worker`: runs the step of a graph's `remote` node for hosts
/// anywhere, as consumers of the node's Redis Streams consumer group
/// (docs/scale-out.md).
#include <cstddef>
#include <string>

namespace plumber {

class Registry;

/// What `plumber worker GRAPH --node ID [--broker URL] [--procs N]` asks for.
struct RemoteWorkerOptions {
  std::string graph;      ///< the graph file (the same as the host's)
  std::string node;       ///< id of a node with `remote`
  std::string broker;     ///< empty: the node's broker, settings.broker, or PLUMBER_BROKER
  std::size_t procs = 1;  ///< consumer processes on this machine
};

/// Runs until SIGTERM or SIGINT (each process finishes its batch, then
/// leaves its consumer group). Returns the exit code: 0 after a signal, 1
/// when the step could not start, 2 for a bad graph, node or broker.
int run_remote_worker(const RemoteWorkerOptions& options, const Registry& registry);

}  // namespace plumber
