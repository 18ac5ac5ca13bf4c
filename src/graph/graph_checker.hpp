// Internal: what checking a graph document is made of (graph_spec.cpp reads
// the document, check_nodes.cpp checks its settings and nodes,
// check_edges.cpp its edges, structure and types).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "plumber/error.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/registry.hpp"

namespace plumber::detail {

inline constexpr std::int64_t kMaxCount = 1'000'000;

/// Unknown node names in edges get a "did you mean" hint up to this many times
/// (each hint scans every id: unbounded, it would make validation quadratic).
inline constexpr std::size_t kMaxNodeHints = 16;

/// `[A-Za-z_][A-Za-z0-9_.-]*`, checked by a loop (a std::regex recurses per
/// character and overflows the stack on long ids).
inline bool is_valid_id(std::string_view id) noexcept {
  auto letter = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; };
  if (id.empty() || !letter(id.front())) return false;
  for (char c : id) {
    if (!letter(c) && !(c >= '0' && c <= '9') && c != '.' && c != '-') return false;
  }
  return true;
}

/// The JSON pointer of `key` inside the object at `pointer`: a key's '~' and
/// '/' are escaped (RFC 6901), so the pointer leads back to that key.
inline std::string child(const std::string& pointer, std::string_view key) {
  return (json::json_pointer(pointer) / std::string(key)).to_string();
}

inline std::string in_quotes(const std::string& text) {
  return "\"" + text + "\"";
}

inline std::string type_name(const json& value) {
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
  void check_remote(const json& node, const std::string& pointer, NodeSpec& spec);
  void check_broker(const std::string& url, const std::string& pointer);
  /// `procs`: an integer, or {"min", "max", "scale_down_after_ms", "cooldown_ms"}.
  void check_procs(const json& node, const std::string& pointer, NodeSpec& spec);
  /// The params of an `exec` node (runs_programs): command, env, cwd (made
  /// absolute: relative to the graph file's directory).
  void check_program(NodeSpec& spec, const std::string& pointer);
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

}  // namespace plumber::detail
