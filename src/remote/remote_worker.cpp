// `plumber worker`: loads the graph, finds the remote node and its broker, and
// runs one consumer of the node's group (remote/remote_consumer.cpp), its step
// in this process or, with --procs N, in a pool of N worker processes.
#include <cstdlib>
#include <iostream>
#include <stdexcept>

#include "plumber/error.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/registry.hpp"
#include "plumber/remote_worker.hpp"
#include "remote/remote_consumer.hpp"

namespace plumber {

int run_remote_worker(const RemoteWorkerOptions& options, const Registry& registry) {
  using namespace detail;
  GraphSpec graph;
  try {
    graph = load_graph_file(options.graph, registry);
  } catch (const GraphError& e) {
    std::cerr << e.what() << '\n';
    return 2;
  }
  const auto index = graph.find(options.node);
  if (!index) {
    std::cerr << "plumber worker: " << options.graph << " has no node \"" << options.node << "\"\n";
    return 2;
  }
  const NodeSpec& node = graph.nodes[*index];
  if (!node.remote || !node.info) {
    std::cerr << "plumber worker: node \"" << options.node
              << "\" is not remote (give it \"remote\": true or {...})\n";
    return 2;
  }
  std::string url = !options.broker.empty() ? options.broker : node.remote->broker;
  if (url.empty())
    if (const char* env = std::getenv("PLUMBER_BROKER")) url = env;
  BrokerAddress address;
  try {
    if (url.empty()) throw std::invalid_argument("no broker: give --broker or PLUMBER_BROKER");
    address = parse_broker_url(url);
  } catch (const std::invalid_argument& e) {
    std::cerr << "plumber worker: " << e.what() << '\n';
    return 2;
  }
  const RemoteKeys keys(graph.name, node.id, graph.settings.priorities);
  return run_consumer(node, keys, address, graph.settings.priorities,
                      {.procs = options.procs,
                       .start_timeout = options.start_timeout,
                       .print_stats = options.stats});
}

}  // namespace plumber
