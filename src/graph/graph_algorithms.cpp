#include "graph/graph_algorithms.hpp"

#include <algorithm>
#include <iterator>
#include <map>
#include <ostream>
#include <string>

// Boost.Graph's edge iterator trips g++ 12's -Wmaybe-uninitialized at -O2 (a
// false positive inside boost::optional); it is not ours to fix.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <boost/graph/adjacency_list.hpp>
#include <boost/graph/graphviz.hpp>
#include <boost/graph/strong_components.hpp>
#include <boost/graph/topological_sort.hpp>

namespace plumber {
namespace detail {
namespace {

using BoostGraph = boost::adjacency_list<boost::vecS, boost::vecS, boost::directedS>;

BoostGraph to_boost(std::size_t node_count, const std::vector<EdgeSpec>& edges) {
  BoostGraph g(node_count);
  for (const EdgeSpec& e : edges)
    boost::add_edge(e.from, e.to, g);
  return g;
}

}  // namespace

std::vector<std::vector<std::size_t>> find_cycles(std::size_t node_count,
                                                  const std::vector<EdgeSpec>& edges) {
  const BoostGraph g = to_boost(node_count, edges);
  std::vector<std::size_t> component(node_count);
  const std::size_t count =
      node_count == 0
          ? 0
          : boost::strong_components(g, boost::make_iterator_property_map(
                                            component.begin(), boost::get(boost::vertex_index, g)));
  std::vector<std::vector<std::size_t>> members(count);
  for (std::size_t v = 0; v < node_count; ++v)
    members[component[v]].push_back(v);
  std::vector<bool> self_loop(node_count, false);  // one pass: a scan per node is quadratic
  for (const EdgeSpec& e : edges) {
    if (e.from == e.to) self_loop[e.from] = true;
  }
  std::vector<std::vector<std::size_t>> cycles;
  for (auto& group : members) {
    if (group.size() > 1 || (group.size() == 1 && self_loop[group[0]])) cycles.push_back(group);
  }
  std::sort(cycles.begin(), cycles.end());
  return cycles;
}

std::vector<std::size_t> topological_order(std::size_t node_count,
                                           const std::vector<EdgeSpec>& edges) {
  const BoostGraph g = to_boost(node_count, edges);
  std::vector<std::size_t> reversed;
  boost::topological_sort(g, std::back_inserter(reversed));
  return {reversed.rbegin(), reversed.rend()};
}

}  // namespace detail

void write_dot(std::ostream& out, const GraphSpec& graph) {
  const auto g = detail::to_boost(graph.nodes.size(), graph.edges);
  auto escape = [](const std::string& text) {
    std::string escaped;
    for (char c : text) {
      if (c == '"' || c == '\\') escaped += '\\';
      escaped += c;
    }
    return escaped;
  };
  auto quote = [&](const std::string& text) { return '"' + escape(text) + '"'; };
  auto node_writer = [&](std::ostream& os, std::size_t v) {
    const NodeSpec& node = graph.nodes[v];
    std::string label = escape(node.id) + "\\n" + escape(node.coroutine);
    if (node.join == JoinPolicy::zip) label += " (zip)";
    if (node.concurrency > 1) label += " x" + std::to_string(node.concurrency);
    if (node.batch_size > 1) label += " batch " + std::to_string(node.batch_size);
    const bool source = graph.predecessors[v].empty();
    const bool sink = graph.successors[v].empty();
    os << "[label=\"" << label << "\", shape="
       << (source ? "invhouse"
           : sink ? "house"
                  : "box")
       << "]";
  };
  boost::write_graphviz(out, g, node_writer, boost::default_writer(),
                        [&](std::ostream& os) { os << "label=" << quote(graph.name) << ";\n"; });
}

}  // namespace plumber
