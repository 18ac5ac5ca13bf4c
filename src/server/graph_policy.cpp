#include "server/graph_policy.hpp"

#include <string>
#include <system_error>

#include "plumber/registry.hpp"

namespace plumber::server {
namespace fs = std::filesystem;

namespace {

/// `path` made absolute under `root` and resolved (symlinks, ".."), when it stays inside.
std::optional<fs::path> inside(const fs::path& root, const std::string& path) {
  std::error_code ec;
  const fs::path base = fs::weakly_canonical(root, ec);
  if (ec) return std::nullopt;
  fs::path candidate = fs::path(path).is_absolute() ? fs::path(path) : base / path;
  candidate = fs::weakly_canonical(candidate, ec);
  if (ec) return std::nullopt;
  auto mismatch = std::mismatch(base.begin(), base.end(), candidate.begin(), candidate.end());
  if (mismatch.first != base.end()) return std::nullopt;
  return candidate;
}

}  // namespace

std::vector<Diagnostic> check_graph_size(const json& document, const GraphLimits& limits) {
  std::vector<Diagnostic> problems;
  if (!document.is_object()) return problems;
  auto nodes = document.find("nodes");
  if (nodes != document.end() && nodes->is_array() && nodes->size() > limits.max_nodes) {
    problems.push_back({"graph.too_many_nodes", "/nodes",
                        "the graph has " + std::to_string(nodes->size()) +
                            " nodes; this server runs graphs of at most " +
                            std::to_string(limits.max_nodes),
                        "the limit is plumber serve's --max-nodes"});
  }
  return problems;
}

void apply_graph_policy(GraphSpec& graph, const GraphLimits& limits) {
  std::vector<Diagnostic> problems;
  if (graph.nodes.size() > limits.max_nodes) {
    problems.push_back({"graph.too_many_nodes", "/nodes",
                        "the graph has " + std::to_string(graph.nodes.size()) +
                            " nodes; this server runs graphs of at most " +
                            std::to_string(limits.max_nodes),
                        "the limit is plumber serve's --max-nodes"});
  }
  std::size_t threads = 0;
  bool threads_reported = false;
  for (std::size_t i = 0; i < graph.nodes.size(); ++i) {
    NodeSpec& node = graph.nodes[i];
    const std::string pointer = "/nodes/" + std::to_string(i);
    const Capabilities capabilities = node.info ? node.info->capabilities : Capabilities{};
    if (capabilities.writes_stdout) {
      problems.push_back(
          {"graph.not_allowed", pointer + "/coroutine",
           "\"" + node.coroutine + "\" writes to the server's stdout, which no client reads",
           "end the graph with \"identity\": a served graph's outputs go to the "
           "client"});
    }
    if (capabilities.runs_programs && !limits.allow_programs) {
      problems.push_back(
          {"graph.not_allowed", pointer + "/coroutine",
           "\"" + node.coroutine + "\" runs a program on the server, and submitted graphs may not",
           "put the graph in the server's --graphs directory and run it by name"});
    }
    if (capabilities.reads_files) {
      const std::string path = node.params.value("path", std::string("-"));
      if (!limits.allow_files) {
        problems.push_back({"graph.file_not_allowed", pointer + "/params/path",
                            "\"" + node.coroutine + "\" reads files, and this server reads none",
                            "start plumber serve with --allow-files DIR to allow files under DIR"});
      } else if (path == "-") {
        problems.push_back({"graph.file_not_allowed", pointer + "/params/path",
                            "\"" + node.coroutine + "\" cannot read the server's stdin",
                            "name a file under the --allow-files directory, or use an \"input\" "
                            "source and send inputs"});
      } else if (auto resolved = inside(*limits.allow_files, path)) {
        // Opening a FIFO (or a device) blocks, or never ends: regular files only.
        std::error_code ec;
        const auto status = fs::status(*resolved, ec);
        const auto expected =
            capabilities.reads_directory ? fs::file_type::directory : fs::file_type::regular;
        if (!ec && status.type() != expected && capabilities.reads_directory) {
          problems.push_back({"graph.file_not_regular", pointer + "/params/path",
                              "\"" + path + "\" is not a directory", ""});
        } else if (!ec && status.type() != expected) {
          problems.push_back({"graph.file_not_regular", pointer + "/params/path",
                              "\"" + path +
                                  "\" is not a regular file (a FIFO, a device or a "
                                  "directory), and this server reads regular files only",
                              ""});
        }
        node.params["path"] = resolved->string();
      } else {
        problems.push_back(
            {"graph.file_not_allowed", pointer + "/params/path",
             "\"" + path + "\" is outside the directory this server may read",
             "paths are relative to, and must stay inside, " + limits.allow_files->string()});
      }
    }
    // An auto-scaled pool counts at its largest.
    threads += node.threads + (node.autoscale ? node.autoscale->max : node.procs);
    if (threads > limits.max_threads && !threads_reported) {
      threads_reported = true;
      problems.push_back({"graph.too_many_threads",
                          pointer + (node.procs > 0 ? "/procs" : "/threads"),
                          "the graph asks for more than " + std::to_string(limits.max_threads) +
                              " threads and worker processes in all",
                          "the limit is plumber serve's --max-threads"});
    }
  }
  if (!problems.empty()) throw GraphError(graph.file, std::move(problems));
}

}  // namespace plumber::server
