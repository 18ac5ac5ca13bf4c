#pragma once
#include <cstddef>
#include <vector>

#include "plumber/graph_spec.hpp"

namespace plumber::detail {

/// The sets of nodes that lie on a cycle (Boost.Graph strong components with
/// more than one node, or a node with an edge to itself), each sorted.
std::vector<std::vector<std::size_t>> find_cycles(std::size_t node_count,
                                                  const std::vector<EdgeSpec>& edges);

/// Node indices with every node after its predecessors; the graph must be acyclic.
std::vector<std::size_t> topological_order(std::size_t node_count,
                                           const std::vector<EdgeSpec>& edges);

}  // namespace plumber::detail
