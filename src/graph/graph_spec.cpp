#include "plumber/graph_spec.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "graph/graph_checker.hpp"
#include "json_parse.hpp"
#include "plumber/error.hpp"

namespace plumber {
namespace {

/// `plumber validate /dev/zero` must end: graph files larger than this are refused.
constexpr std::size_t kMaxGraphBytes = 256u << 20;

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
  return detail::Checker(registry, file).check(document);
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
