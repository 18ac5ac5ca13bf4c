#pragma once
#include <chrono>
#include <cstddef>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "plumber/json.hpp"

namespace plumber {

class Registry;
struct CoroutineInfo;
struct PredicateInfo;

/// How a node with several predecessors combines their messages.
enum class JoinPolicy {
  merge,  // each input message is processed as it arrives
  zip     // wait for the message with the same id from every predecessor; deliver
          // one object keyed by predecessor id, in edge order
};

/// Where a `remote` node's step runs: `plumber worker` processes fed through
/// Redis Streams (docs/scale-out.md).
struct RemoteSpec {
  /// `redis://[:password@]host:port[/db]`; empty: settings.broker, else the
  /// PLUMBER_BROKER environment variable when the pipeline starts.
  std::string broker;
  std::size_t in_flight = 256;  ///< messages outstanding at once (back pressure)
  /// A delivered entry unacknowledged this long is claimed by another worker.
  std::chrono::milliseconds claim_idle{30'000};
  /// Deliveries before an entry becomes an error record (and a dead letter).
  std::size_t max_deliveries = 1;
};

/// `"procs": {"min": M, "max": N}`: an auto-scaled pool (NodeSpec::procs is M).
struct ProcsScaling {
  std::size_t max = 1;  ///< never more workers than this
  /// Back to `min` after this long with nothing to do.
  std::chrono::milliseconds scale_down_after{30'000};
  /// At least this long between two changes of the pool's size.
  std::chrono::milliseconds cooldown{1'000};
};

/// One node of a graph file, with every default resolved.
struct NodeSpec {
  std::string id;
  std::string coroutine;
  json params = json::object();  ///< declared defaults filled in
  std::size_t concurrency = 1;
  std::size_t threads = 0;
  std::size_t procs = 0;  ///< worker processes (or program copies); the minimum when scaled
  /// Set when `procs` is the object form: the pool grows and shrinks between
  /// `procs` and `autoscale->max`.
  std::optional<ProcsScaling> autoscale;
  std::size_t batch_size = 1;
  std::chrono::milliseconds batch_timeout{0};
  std::size_t queue_size = 64;
  JoinPolicy join = JoinPolicy::merge;
  std::string when;  ///< predicate name, empty for none
  std::size_t retries = 0;
  std::optional<std::chrono::milliseconds> timeout;
  /// A worker process whose step runs longer than this is killed and replaced
  /// (`kill_after_ms`; by default `timeout_ms`). Worker processes only.
  std::optional<std::chrono::milliseconds> kill_after;
  /// Set when the step runs on other machines (`remote`).
  std::optional<RemoteSpec> remote;
  /// What loading resolved `coroutine` and `when` to: building a pipeline looks
  /// nothing up again. Null in a spec made by hand (Plumber::build then asks its
  /// registry).
  std::shared_ptr<const CoroutineInfo> info;
  std::shared_ptr<const PredicateInfo> when_info;
};

/// One edge, as indices into GraphSpec::nodes.
struct EdgeSpec {
  std::size_t from = 0;
  std::size_t to = 0;
};

struct GraphSettings {
  std::size_t queue_size = 64;
  std::size_t priorities = 1;
  std::string broker;  ///< default broker of `remote` nodes
};

/// A parsed and validated graph file (format 1).
struct GraphSpec {
  std::string file;  ///< where it was loaded from, for messages
  std::string name;
  GraphSettings settings;
  std::vector<NodeSpec> nodes;
  std::vector<EdgeSpec> edges;
  /// Node indices, every node after its predecessors (Boost.Graph topological sort).
  std::vector<std::size_t> topological_order;
  /// Per node, predecessor and successor indices in edge order.
  std::vector<std::vector<std::size_t>> predecessors;
  std::vector<std::vector<std::size_t>> successors;

  /// Index of the node called `id`.
  std::optional<std::size_t> find(std::string_view id) const;
  /// Index of the source fed by the host (Capabilities::host_fed), if any.
  std::optional<std::size_t> host_fed_input() const;
};

/// Reads and validates a graph file; throws GraphError with every diagnostic.
GraphSpec load_graph_file(const std::string& path, const Registry& registry);
/// Parses and validates graph text; `file` only labels messages.
GraphSpec parse_graph(std::string_view text, const Registry& registry,
                      const std::string& file = "<graph>");
/// Validates an already parsed document.
GraphSpec graph_from_json(const json& document, const Registry& registry,
                          const std::string& file = "<graph>");

/// Writes the graph in Graphviz DOT (Boost.Graph's write_graphviz).
void write_dot(std::ostream& out, const GraphSpec& graph);

}  // namespace plumber
