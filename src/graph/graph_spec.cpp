#include "plumber/graph_spec.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "graph/graph_algorithms.hpp"
#include "json_parse.hpp"
#include "plumber/error.hpp"
#include "plumber/registry.hpp"

namespace plumber {
namespace {

constexpr std::int64_t kMaxCount = 1'000'000;

/// `plumber validate /dev/zero` must end: graph files larger than this are refused.
constexpr std::size_t kMaxGraphBytes = 256u << 20;

/// Unknown node names in edges get a "did you mean" hint up to this many times
/// (each hint scans every id: unbounded, it would make validation quadratic).
constexpr std::size_t kMaxNodeHints = 16;

/// `[A-Za-z_][A-Za-z0-9_.-]*`, checked by a loop (a std::regex recurses per
/// character and overflows the stack on long ids).
bool is_valid_id(std::string_view id) noexcept {
  auto letter = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; };
  if (id.empty() || !letter(id.front())) return false;
  for (char c : id) {
    if (!letter(c) && !(c >= '0' && c <= '9') && c != '.' && c != '-') return false;
  }
  return true;
}

/// The JSON pointer of `key` inside the object at `pointer`: a key's '~' and
/// '/' are escaped (RFC 6901), so the pointer leads back to that key.
std::string child(const std::string& pointer, std::string_view key) {
  return (json::json_pointer(pointer) / std::string(key)).to_string();
}

std::string in_quotes(const std::string& text) {
  return "\"" + text + "\"";
}

std::string type_name(const json& value) {
  if (value.is_number_integer()) return "integer";
  if (value.is_number_float()) return "number";
  return value.type_name();
}

/// The choice sharing the longest prefix with `name`, when close enough for a hint.
template <class Choices>
std::string nearest_of(std::string_view name, const Choices& choices) {
  std::string best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (std::string_view choice : choices) {
    // Distance: the characters beyond the shared prefix (typos sit at the end).
    std::size_t common = 0;
    while (common < name.size() && common < choice.size() && name[common] == choice[common]) {
      ++common;
    }
    const std::size_t distance = std::max(name.size(), choice.size()) - common;
    if (distance < best_distance) {
      best_distance = distance;
      best = choice;
    }
  }
  return best_distance <= std::max<std::size_t>(2, name.size() / 2) ? best : std::string{};
}

/// Collects diagnostics while a document is checked.
class Checker {
 public:
  Checker(const Registry& registry, std::string file)
      : registry_(registry), file_(std::move(file)) {}

  GraphSpec check(const json& document);

 private:
  void error(std::string code, std::string pointer, std::string message, std::string hint = {}) {
    diagnostics_.push_back(
        {std::move(code), std::move(pointer), std::move(message), std::move(hint)});
  }

  /// Reads an optional integer field in [low, high]; returns `fallback` when absent or wrong.
  std::int64_t integer(const json& object, const std::string& pointer, const char* key,
                       std::int64_t fallback, std::int64_t low, std::int64_t high) {
    auto it = object.find(key);
    if (it == object.end()) return fallback;
    const std::string where = child(pointer, key);
    if (!it->is_number_integer()) {
      error("graph.wrong_type", where,
            std::string(key) + " must be an integer, not " + type_name(*it));
      return fallback;
    }
    // An unsigned beyond 2^63 - 1 must not wrap to a negative int64.
    const bool huge =
        it->is_number_unsigned() &&
        it->get<std::uint64_t>() > std::uint64_t{std::numeric_limits<std::int64_t>::max()};
    if (huge) {
      error("graph.out_of_range", where,
            std::string(key) + " must be between " + std::to_string(low) + " and " +
                std::to_string(high) + ", not " + it->dump());
      return fallback;
    }
    const auto value = it->get<std::int64_t>();
    if (value < low || value > high) {
      error("graph.out_of_range", where,
            std::string(key) + " must be between " + std::to_string(low) + " and " +
                std::to_string(high) + ", not " + std::to_string(value));
      return fallback;
    }
    return value;
  }

  std::optional<std::string> string(const json& object, const std::string& pointer, const char* key,
                                    bool required) {
    auto it = object.find(key);
    if (it == object.end()) {
      if (required) {
        error("graph.missing_field", pointer,
              std::string("missing required field \"") + key + "\"");
      }
      return std::nullopt;
    }
    if (!it->is_string()) {
      error("graph.wrong_type", child(pointer, key),
            std::string(key) + " must be a string, not " + type_name(*it));
      return std::nullopt;
    }
    return it->get<std::string>();
  }

  void unknown_fields(const json& object, const std::string& pointer,
                      std::initializer_list<std::string_view> known) {
    for (const auto& [key, value] : object.items()) {
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      const std::string near = nearest_of(key, known);
      error("graph.unknown_field", child(pointer, key), "unknown field " + in_quotes(key),
            near.empty() ? "" : "did you mean " + in_quotes(near) + "?");
    }
  }

  void check_settings(const json& document, GraphSpec& graph);
  void check_node(const json& node, std::size_t index, GraphSpec& graph);
  void check_params(const json& params, const std::string& pointer, const CoroutineInfo& info,
                    NodeSpec& node);
  void check_edges(const json& document, GraphSpec& graph, std::vector<std::string>& edge_pointers);
  void check_structure(GraphSpec& graph, const std::vector<std::string>& edge_pointers);
  void check_types(const GraphSpec& graph, const std::vector<std::string>& edge_pointers);

  const Registry& registry_;
  std::string file_;
  std::vector<Diagnostic> diagnostics_;
  std::vector<const CoroutineInfo*> infos_;             // per node, null when unknown
  std::unordered_map<std::string, std::size_t> index_;  // node id -> first node with it
  std::size_t node_hints_ = 0;
  bool nodes_ok_ = true;
};

GraphSpec Checker::check(const json& document) {
  GraphSpec graph;
  graph.file = file_;
  if (!document.is_object()) {
    error("graph.not_an_object", "", "a graph must be a JSON object, not " + type_name(document),
          "see docs/graph-format.md");
    throw GraphError(file_, std::move(diagnostics_));
  }
  unknown_fields(document, "", {"plumber", "name", "settings", "nodes", "edges", "description"});

  auto format = document.find("plumber");
  if (format == document.end()) {
    error("graph.missing_field", "", "missing required field \"plumber\"",
          "add \"plumber\": 1 (the format version)");
  } else if (!format->is_number_integer() || format->get<std::int64_t>() != 1) {
    error("graph.unsupported_format", "/plumber",
          "unsupported format " + format->dump() + "; this version reads format 1");
  }
  if (auto name = string(document, "", "name", false)) {
    graph.name = *name;
  } else if (file_ != "<graph>") {
    graph.name = std::filesystem::path(file_).stem().string();
  } else {
    graph.name = "graph";
  }
  if (auto description = document.find("description");
      description != document.end() && !description->is_string()) {
    error("graph.wrong_type", "/description", "description must be a string");
  }
  check_settings(document, graph);

  auto nodes = document.find("nodes");
  if (nodes == document.end()) {
    error("graph.missing_field", "", "missing required field \"nodes\"");
    throw GraphError(file_, std::move(diagnostics_));
  }
  if (!nodes->is_array() || nodes->empty()) {
    error("graph.no_nodes", "/nodes", "nodes must be a non-empty array of node objects");
    throw GraphError(file_, std::move(diagnostics_));
  }
  for (std::size_t i = 0; i < nodes->size(); ++i)
    check_node((*nodes)[i], i, graph);

  std::vector<std::string> edge_pointers;
  check_edges(document, graph, edge_pointers);
  if (nodes_ok_) check_structure(graph, edge_pointers);
  if (!diagnostics_.empty()) throw GraphError(file_, std::move(diagnostics_));
  return graph;
}

void Checker::check_settings(const json& document, GraphSpec& graph) {
  auto settings = document.find("settings");
  if (settings == document.end()) return;
  if (!settings->is_object()) {
    error("graph.wrong_type", "/settings",
          "settings must be an object, not " + type_name(*settings));
    return;
  }
  unknown_fields(*settings, "/settings", {"queue_size", "priorities"});
  graph.settings.queue_size =
      static_cast<std::size_t>(integer(*settings, "/settings", "queue_size", 64, 1, kMaxCount));
  graph.settings.priorities =
      static_cast<std::size_t>(integer(*settings, "/settings", "priorities", 1, 1, 16));
}

void Checker::check_node(const json& node, std::size_t index, GraphSpec& graph) {
  const std::string pointer = "/nodes/" + std::to_string(index);
  NodeSpec spec;
  spec.queue_size = graph.settings.queue_size;
  const CoroutineInfo* info = nullptr;
  if (!node.is_object()) {
    error("graph.wrong_type", pointer, "a node must be an object, not " + type_name(node));
    nodes_ok_ = false;
    graph.nodes.push_back(std::move(spec));
    infos_.push_back(nullptr);
    return;
  }
  unknown_fields(node, pointer,
                 {"id", "coroutine", "params", "concurrency", "threads", "procs", "batch_size",
                  "batch_timeout_ms", "queue_size", "join", "when", "retries", "timeout_ms",
                  "kill_after_ms", "description"});

  if (auto id = string(node, pointer, "id", true)) {
    if (!is_valid_id(*id)) {
      error("graph.bad_id", pointer + "/id", "node id " + in_quotes(*id) + " is not a valid id",
            "use letters, digits, '_', '.', '-', starting with a letter or '_'");
    }
    auto [first, inserted] = index_.try_emplace(*id, index);
    if (!inserted) {
      error("graph.duplicate_id", pointer + "/id", "duplicate node id " + in_quotes(*id),
            "first defined at /nodes/" + std::to_string(first->second));
    }
    spec.id = *id;
  } else {
    nodes_ok_ = false;
  }

  if (auto coroutine = string(node, pointer, "coroutine", true)) {
    spec.coroutine = *coroutine;
    info = registry_.find(*coroutine);
    if (!info) {
      const std::string near = registry_.nearest(*coroutine);
      error("graph.unknown_coroutine", pointer + "/coroutine",
            "unknown coroutine " + in_quotes(*coroutine),
            near.empty() ? "see `plumber list`" : "did you mean " + in_quotes(near) + "?");
    }
  }

  spec.concurrency = static_cast<std::size_t>(integer(node, pointer, "concurrency", 1, 1, 100'000));
  spec.threads = static_cast<std::size_t>(integer(node, pointer, "threads", 0, 0, 256));
  spec.procs = static_cast<std::size_t>(integer(node, pointer, "procs", 0, 0, 256));
  // A thread pool is only useful with as many messages in flight as threads.
  if (spec.threads > 0 && !node.contains("concurrency")) spec.concurrency = spec.threads;
  // Worker processes: a few batches queued per worker keep it busy while the
  // parent handles the results of the previous ones.
  if (spec.procs > 0 && !node.contains("concurrency")) spec.concurrency = 4 * spec.procs;
  spec.batch_size = static_cast<std::size_t>(integer(node, pointer, "batch_size", 1, 1, 100'000));
  spec.batch_timeout =
      std::chrono::milliseconds(integer(node, pointer, "batch_timeout_ms", 0, 0, 3'600'000));
  spec.queue_size = static_cast<std::size_t>(integer(
      node, pointer, "queue_size", static_cast<std::int64_t>(spec.queue_size), 1, kMaxCount));
  spec.retries = static_cast<std::size_t>(integer(node, pointer, "retries", 0, 0, 1000));
  if (node.contains("timeout_ms")) {
    spec.timeout =
        std::chrono::milliseconds(integer(node, pointer, "timeout_ms", 1, 1, 86'400'000));
  }
  if (node.contains("kill_after_ms")) {
    spec.kill_after =
        std::chrono::milliseconds(integer(node, pointer, "kill_after_ms", 1, 1, 86'400'000));
    if (spec.procs == 0) {
      error("graph.kill_after_without_procs", pointer + "/kill_after_ms",
            "kill_after_ms applies to worker processes only",
            "add \"procs\", or use \"timeout_ms\"");
    }
  }
  if (auto join = string(node, pointer, "join", false)) {
    if (*join == "merge") {
      spec.join = JoinPolicy::merge;
    } else if (*join == "zip") {
      spec.join = JoinPolicy::zip;
    } else {
      error("graph.bad_join", pointer + "/join",
            "join must be \"merge\" or \"zip\", not " + in_quotes(*join));
    }
  }
  if (auto when = string(node, pointer, "when", false)) {
    spec.when = *when;
    if (!registry_.find_predicate(*when)) {
      const std::string near = registry_.nearest_predicate(*when);
      error("graph.unknown_predicate", pointer + "/when", "unknown predicate " + in_quotes(*when),
            near.empty() ? "see `plumber list`" : "did you mean " + in_quotes(near) + "?");
    }
  }

  if (info) {
    if (spec.procs > 0 && !info->worker_capable) {
      error("graph.not_worker_capable", pointer + "/procs",
            "coroutine " + in_quotes(info->name) + " cannot run in a worker process",
            "it holds in-process state; use \"threads\" instead");
    } else if (spec.procs > 0 && spec.threads > 0) {
      error("graph.threads_and_procs", pointer + "/procs",
            "a node runs its step either on threads or in worker processes, not both",
            "remove \"threads\" or \"procs\"");
    }
    if (info->kind == CoroutineKind::source) {
      for (const char* key : {"join", "when", "batch_size", "batch_timeout_ms", "concurrency",
                              "threads", "retries", "timeout_ms"}) {
        if (node.contains(key)) {
          error("graph.not_for_sources", child(pointer, key),
                std::string(key) + " does not apply to source " + in_quotes(info->name));
        }
      }
    }
    auto params = node.find("params");
    if (params != node.end() && !params->is_object()) {
      error("graph.wrong_type", pointer + "/params",
            "params must be an object, not " + type_name(*params));
    } else {
      check_params(params == node.end() ? json::object() : *params, pointer + "/params", *info,
                   spec);
    }
  }
  infos_.push_back(info);
  if (info) spec.info = registry_.find_shared(spec.coroutine);
  if (!spec.when.empty()) spec.when_info = registry_.find_predicate_shared(spec.when);
  // A batch is gathered from what waits in the input: the input holds at
  // least one batch (docs/graph-format.md).
  spec.queue_size = std::max(spec.queue_size, spec.batch_size);
  graph.nodes.push_back(std::move(spec));
}

bool has_type(const json& value, ParamType type) {
  switch (type) {
    case ParamType::any:
      return true;
    case ParamType::boolean:
      return value.is_boolean();
    case ParamType::integer:  // an int64: unsigned beyond 2^63 - 1 would wrap
      return value.is_number_integer() &&
             (!value.is_number_unsigned() ||
              value.get<std::uint64_t>() <=
                  std::uint64_t{std::numeric_limits<std::int64_t>::max()});
    case ParamType::number:
      return value.is_number();
    case ParamType::string:
      return value.is_string();
    case ParamType::array:
      return value.is_array();
    case ParamType::object:
      return value.is_object();
  }
  return false;
}

void Checker::check_params(const json& params, const std::string& pointer,
                           const CoroutineInfo& info, NodeSpec& node) {
  node.params = json::object();
  for (const auto& [key, value] : params.items()) {
    auto declared = std::find_if(info.params.begin(), info.params.end(),
                                 [&name = key](const ParamSpec& p) { return p.name == name; });
    if (declared == info.params.end()) {
      std::string known;
      for (const auto& p : info.params)
        known += (known.empty() ? "" : ", ") + p.name;
      error("graph.unknown_param", child(pointer, key),
            "coroutine " + in_quotes(info.name) + " has no param " + in_quotes(key),
            known.empty() ? "it takes no params" : "it takes: " + known);
      continue;
    }
    if (!has_type(value, declared->type)) {
      error(
          "graph.bad_param", child(pointer, key),
          "param " + in_quotes(key) + " must be " + std::string(to_string(declared->type)) +
              ", not " +
              (value.is_number_integer() ? value.dump() + " (beyond 2^63 - 1)" : type_name(value)));
      continue;
    }
    node.params[key] = value;
  }
  bool complete = true;
  for (const ParamSpec& p : info.params) {
    if (node.params.contains(p.name)) continue;
    if (params.contains(p.name)) {
      complete = false;  // present but wrong
      continue;
    }
    if (p.required) {
      complete = false;
      error("graph.missing_param", pointer,
            "coroutine " + in_quotes(info.name) + " needs param " + in_quotes(p.name),
            p.description.empty() ? "" : p.name + ": " + p.description);
    } else if (!p.default_value.is_null()) {
      node.params[p.name] = p.default_value;
    }
  }
  if (complete && info.check_params) {
    try {
      info.check_params(node.params);
    } catch (const std::exception& e) {
      error("graph.bad_param", pointer, e.what());
    }
  }
}

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

}  // namespace

std::optional<std::size_t> GraphSpec::host_fed_input() const {
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i].info && nodes[i].info->capabilities.host_fed) return i;
  }
  return std::nullopt;
}

std::optional<std::size_t> GraphSpec::find(std::string_view id) const {
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i].id == id) return i;
  }
  return std::nullopt;
}

GraphSpec graph_from_json(const json& document, const Registry& registry, const std::string& file) {
  return Checker(registry, file).check(document);
}

GraphSpec parse_graph(std::string_view text, const Registry& registry, const std::string& file) {
  json document;
  try {
    document = detail::parse_json(text);
  } catch (const detail::JsonParseError& e) {
    throw GraphError(
        file, {{"graph.malformed_json", "", "malformed JSON: " + std::string(e.what()), ""}});
  }
  return graph_from_json(document, registry, file);
}

GraphSpec load_graph_file(const std::string& path, const Registry& registry) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw GraphError(path, {{"graph.unreadable", "", "is a directory, not a graph file", ""}});
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw GraphError(
        path, {{"graph.unreadable", "", "cannot open: " + std::string(std::strerror(errno)), ""}});
  }
  // Read at most kMaxGraphBytes + 1 bytes: a device such as /dev/zero never ends.
  std::string text;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    text.append(buffer, static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxGraphBytes) {
      throw GraphError(path, {{"graph.too_large", "",
                               "larger than " + std::to_string(kMaxGraphBytes >> 20) +
                                   " MiB; a graph file is at most that",
                               ""}});
    }
  }
  if (in.bad()) {
    throw GraphError(
        path, {{"graph.unreadable", "", "cannot read: " + std::string(std::strerror(errno)), ""}});
  }
  return parse_graph(text, registry, path);
}

}  // namespace plumber
