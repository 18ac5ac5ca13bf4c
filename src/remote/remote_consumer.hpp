// Internal: the worker side of a remote node (`plumber worker`): one consumer
// of the node's consumer group, whose step runs in this process or in a pool
// of worker processes (src/workers/).
#pragma once
#include <chrono>
#include <cstddef>

#include "plumber/graph_spec.hpp"
#include "remote/broker_url.hpp"
#include "remote/remote_codec.hpp"

namespace plumber::detail {

/// How `plumber worker` runs the step.
struct ConsumerOptions {
  /// 0: in this process. N: in a worker pool of N processes, as `procs` on a
  /// node (on_start once per process; a process that dies is restarted and its
  /// batch run again, up to max_deliveries runs).
  std::size_t procs = 0;
  /// How long the pool's processes may take to run on_start.
  std::chrono::milliseconds start_timeout{10'000};
  /// Print the consumer's and the pool's counters on stderr at the end.
  bool print_stats = false;
};

/// Runs one consumer of `node`'s group until SIGTERM or SIGINT: it finishes
/// the entries it took, leaves the group and returns 0; 1 when the step could
/// not start.
int run_consumer(const NodeSpec& node, const RemoteKeys& keys, const BrokerAddress& address,
                 std::size_t priorities, const ConsumerOptions& options);

}  // namespace plumber::detail
