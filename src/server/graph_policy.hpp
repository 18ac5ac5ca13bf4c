#pragma once
/// What a graph submitted to `plumber serve` may do: the server runs only
/// registered coroutines, and refuses what would reach outside the graph
/// (files, the server's stdout) or take the machine (nodes, threads).
#include <cstddef>
#include <filesystem>
#include <optional>
#include <vector>

#include "plumber/error.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/json.hpp"

namespace plumber::server {

struct GraphLimits {
  std::size_t max_nodes = 256;
  /// Threads and worker processes one graph may start, summed over its nodes.
  std::size_t max_threads = 16;
  /// Where `lines` and `jsonl` may read; none: they are refused.
  std::optional<std::filesystem::path> allow_files;
  /// `exec` nodes (programs run on the server): allowed in the graphs of
  /// --graphs DIR, which the operator wrote, never in submitted ones.
  bool allow_programs = false;
};

/// Checks the size of a graph document before it is validated (a huge graph
/// is refused before any work is spent on it). Empty when it is fine.
std::vector<Diagnostic> check_graph_size(const json& document, const GraphLimits& limits);

/// Refuses what a served graph may not do, with a diagnostic per culprit, and
/// rewrites the paths of allowed file sources to absolute ones. Throws GraphError.
void apply_graph_policy(GraphSpec& graph, const GraphLimits& limits);

}  // namespace plumber::server
