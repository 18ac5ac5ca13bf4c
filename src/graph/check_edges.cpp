// Checking a graph document: its edges, its structure (cycles, sources,
// sinks) and the types along its edges.
#include <map>
#include <string>
#include <utility>

#include "graph/graph_algorithms.hpp"
#include "graph/graph_checker.hpp"

namespace plumber::detail {

void Checker::check_edges(const json& document, GraphSpec& graph,
                          std::vector<std::string>& edge_pointers) {
  auto edges = document.find("edges");
  if (edges == document.end()) return;
  if (!edges->is_array()) {
    error("graph.wrong_type", "/edges", "edges must be an array, not " + type_name(*edges));
    return;
  }
  std::map<std::pair<std::size_t, std::size_t>, std::string> seen;
  for (std::size_t i = 0; i < edges->size(); ++i) {
    const json& edge = (*edges)[i];
    const std::string pointer = "/edges/" + std::to_string(i);
    if (!edge.is_object()) {
      error("graph.wrong_type", pointer,
            "an edge must be an object {\"from\", \"to\"}, not " + type_name(edge));
      continue;
    }
    unknown_fields(edge, pointer, {"from", "to"});
    std::optional<std::size_t> ends[2];
    const char* keys[2] = {"from", "to"};
    for (int k = 0; k < 2; ++k) {
      auto name = string(edge, pointer, keys[k], true);
      if (!name) continue;
      if (auto found = index_.find(*name); found != index_.end()) ends[k] = found->second;
      if (!ends[k]) {
        std::vector<std::string_view> ids;
        if (node_hints_++ < kMaxNodeHints) {
          for (const auto& n : graph.nodes)
            ids.push_back(n.id);
        }
        const std::string near = nearest_of(*name, ids);
        error("graph.unknown_node", child(pointer, keys[k]),
              "edge " + std::string(keys[k]) + " names unknown node " + in_quotes(*name),
              near.empty() ? "nodes are declared in /nodes"
                           : "did you mean " + in_quotes(near) + "?");
      }
    }
    if (!ends[0] || !ends[1]) continue;
    auto [it, inserted] = seen.try_emplace({*ends[0], *ends[1]}, pointer);
    if (!inserted) {
      error("graph.duplicate_edge", pointer,
            "duplicate edge " + in_quotes(graph.nodes[*ends[0]].id) + " -> " +
                in_quotes(graph.nodes[*ends[1]].id),
            "first at " + it->second);
      continue;
    }
    graph.edges.push_back({*ends[0], *ends[1]});
    edge_pointers.push_back(pointer);
  }
}

void Checker::check_structure(GraphSpec& graph, const std::vector<std::string>& edge_pointers) {
  const std::size_t n = graph.nodes.size();
  graph.predecessors.assign(n, {});
  graph.successors.assign(n, {});
  std::vector<std::vector<std::size_t>> in_edges(n), out_edges(n);  // edge indices
  for (std::size_t k = 0; k < graph.edges.size(); ++k) {
    const EdgeSpec& e = graph.edges[k];
    graph.successors[e.from].push_back(e.to);
    graph.predecessors[e.to].push_back(e.from);
    out_edges[e.from].push_back(k);
    in_edges[e.to].push_back(k);
  }

  std::size_t inputs = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const NodeSpec& node = graph.nodes[i];
    const CoroutineInfo* info = infos_[i];
    const std::string pointer = "/nodes/" + std::to_string(i);
    if (!info) continue;
    if (info->capabilities.host_fed && ++inputs == 2) {
      error("graph.two_inputs", pointer,
            "a graph has at most one source fed by the host (like \"input\")",
            "it receives what the host feeds; fan out from it with edges instead");
    }
    const bool is_source = info->kind == CoroutineKind::source;
    if (is_source && !graph.predecessors[i].empty()) {
      for (std::size_t k : in_edges[i]) {
        error("graph.source_with_input", edge_pointers[k] + "/to",
              "source " + in_quotes(node.id) + " (" + node.coroutine + ") cannot have inputs",
              "sources emit new messages; remove this edge");
      }
    }
    if (!is_source && graph.predecessors[i].empty()) {
      error("graph.no_input", pointer,
            std::string(to_string(info->kind)) + " " + in_quotes(node.id) + " (" + node.coroutine +
                ") has no input",
            "add an edge to it, or use a source coroutine");
    }
    if (info->kind == CoroutineKind::sink && !graph.successors[i].empty()) {
      for (std::size_t k : out_edges[i]) {
        error("graph.sink_with_output", edge_pointers[k] + "/from",
              "sink " + in_quotes(node.id) + " (" + node.coroutine + ") emits nothing downstream",
              "remove this edge, or use a transform");
      }
    }
  }

  const auto cycles = detail::find_cycles(n, graph.edges);
  // The first edge inside each cycle, found in one pass over the edges.
  std::vector<std::size_t> cycle_of(n, cycles.size());
  for (std::size_t c = 0; c < cycles.size(); ++c) {
    for (std::size_t v : cycles[c])
      cycle_of[v] = c;
  }
  std::vector<std::string> cycle_pointers(cycles.size());
  for (std::size_t k = 0; k < graph.edges.size(); ++k) {
    const std::size_t c = cycle_of[graph.edges[k].from];
    if (c < cycles.size() && cycle_of[graph.edges[k].to] == c && cycle_pointers[c].empty()) {
      cycle_pointers[c] = edge_pointers[k];
    }
  }
  for (std::size_t c = 0; c < cycles.size(); ++c) {
    const auto& cycle = cycles[c];
    const std::string& pointer = cycle_pointers[c];
    std::string names;
    for (std::size_t v : cycle)
      names += (names.empty() ? "" : ", ") + graph.nodes[v].id;
    error("graph.cycle", pointer, "cycle through nodes " + names,
          "pipelines are acyclic: remove one of the edges between these nodes");
  }
  if (!cycles.empty()) return;
  graph.topological_order = detail::topological_order(n, graph.edges);
  check_types(graph, edge_pointers);
}

void Checker::check_types(const GraphSpec& graph, const std::vector<std::string>& edge_pointers) {
  // What each node may emit, in topological order; undeclared (empty) means anything.
  const std::size_t n = graph.nodes.size();
  std::vector<ValueTypes> emitted(n);
  auto received = [&](std::size_t node) -> ValueTypes {
    if (graph.nodes[node].join == JoinPolicy::zip) return {ValueTypes::object};
    ValueTypes all;
    for (std::size_t from : graph.predecessors[node]) {
      if (!emitted[from].declared()) return {};
      all = all | emitted[from];
    }
    return all;
  };
  for (std::size_t node : graph.topological_order) {
    if (!infos_[node]) continue;  // unknown coroutine, reported already: anything goes
    const CoroutineInfo& info = *infos_[node];
    const ValueTypes in = info.kind == CoroutineKind::source ? ValueTypes{} : received(node);
    emitted[node] = info.emits_input_type ? in : info.emits;
    // Messages that `when` rejects pass unchanged.
    if (!graph.nodes[node].when.empty()) {
      emitted[node] = in.declared() && emitted[node].declared() ? emitted[node] | in : ValueTypes{};
    }
  }
  auto describe = [&](std::size_t node) {
    return in_quotes(graph.nodes[node].id) + " (" + graph.nodes[node].coroutine + ")";
  };
  for (std::size_t k = 0; k < graph.edges.size(); ++k) {
    const auto [from, to] = graph.edges[k];
    const ValueTypes accepts = infos_[to] ? infos_[to]->accepts : ValueTypes{};
    // A `when` may be what keeps the wrong kinds out; a zip is checked below.
    if (!accepts.declared() || !graph.nodes[to].when.empty() ||
        graph.nodes[to].join == JoinPolicy::zip) {
      continue;
    }
    if (!emitted[from].declared() || emitted[from].overlaps(accepts)) continue;
    error("graph.type_mismatch", edge_pointers[k],
          describe(from) + " emits " + emitted[from].to_string() + ", but " + describe(to) +
              " accepts " + accepts.to_string(),
          "insert a step that converts between them, or connect other nodes");
  }
  for (std::size_t node = 0; node < n; ++node) {
    const ValueTypes accepts = infos_[node] ? infos_[node]->accepts : ValueTypes{};
    if (graph.nodes[node].join != JoinPolicy::zip || !accepts.declared() ||
        accepts.overlaps({ValueTypes::object})) {
      continue;
    }
    error("graph.type_mismatch", "/nodes/" + std::to_string(node) + "/join",
          describe(node) + " accepts " + accepts.to_string() +
              ", but join \"zip\" delivers an object keyed by predecessor id",
          "use \"merge\", or a step that accepts objects");
  }
}

}  // namespace plumber::detail
