#include "cli/cli.hpp"

#include <fstream>
#include <iostream>
#include <sstream>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "plumber/all.hpp"

namespace plumber::cli {
namespace {

void print_graph_error(const GraphError& e) {
  for (const auto& d : e.diagnostics())
    std::cerr << d.format(e.file()) << '\n';
}

int validate(const std::vector<std::string>& files, const Registry& registry) {
  int status = kExitOk;
  for (const auto& file : files) {
    try {
      const GraphSpec graph = load_graph_file(file, registry);
      std::cout << file << ": ok (" << graph.nodes.size() << " nodes, " << graph.edges.size()
                << " edges)\n";
    } catch (const GraphError& e) {
      print_graph_error(e);
      status = kExitInvalid;
    }
  }
  return status;
}

int dot(const std::string& file, const Registry& registry) {
  try {
    write_dot(std::cout, load_graph_file(file, registry));
    return kExitOk;
  } catch (const GraphError& e) {
    print_graph_error(e);
    return kExitInvalid;
  }
}

json params_json(const std::vector<ParamSpec>& params) {
  json all = json::array();
  for (const auto& p : params) {
    json one = json::object();
    one["name"] = p.name;
    one["type"] = std::string(to_string(p.type));
    one["required"] = p.required;
    if (!p.default_value.is_null()) one["default"] = p.default_value;
    one["description"] = p.description;
    all.push_back(std::move(one));
  }
  return all;
}

/// Pads a name to the width of `plumber list`'s first column.
std::string column(const std::string& name) {
  return name + std::string(name.size() < 12 ? 12 - name.size() : 1, ' ');
}

int list(bool as_json, const Registry& registry) {
  if (as_json) {
    json coroutines = json::array();
    for (const CoroutineInfo* info : registry.coroutines()) {
      json one = json::object();
      one["name"] = info->name;
      one["kind"] = std::string(to_string(info->kind));
      one["description"] = info->description;
      one["params"] = params_json(info->params);
      one["worker_capable"] = info->worker_capable;
      coroutines.push_back(std::move(one));
    }
    json predicates = json::array();
    for (const PredicateInfo* info : registry.predicates()) {
      json one = json::object();
      one["name"] = info->name;
      one["description"] = info->description;
      predicates.push_back(std::move(one));
    }
    json all = json::object();
    all["coroutines"] = std::move(coroutines);
    all["predicates"] = std::move(predicates);
    std::cout << all.dump(2) << '\n';
    return kExitOk;
  }
  std::cout << "coroutines:\n";
  for (const CoroutineInfo* info : registry.coroutines()) {
    std::string params;
    for (const auto& p : info->params) {
      params += (params.empty() ? "" : ", ") + p.name + ": " + std::string(to_string(p.type));
      if (!p.required && !p.default_value.is_null()) params += " = " + p.default_value.dump();
    }
    std::cout << "  " << column(info->name) << to_string(info->kind)
              << (info->worker_capable ? ", worker" : "") << "  " << info->description;
    if (!params.empty()) std::cout << "  (" << params << ")";
    std::cout << '\n';
  }
  std::cout << "predicates (for \"when\"):\n";
  for (const PredicateInfo* info : registry.predicates()) {
    std::cout << "  " << column(info->name) << info->description << '\n';
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("plumber"));
  spdlog::set_pattern("plumber: %^%l%$: %v");

  CLI::App app{"plumber: async processing pipelines described as JSON graphs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "plumber 0.1.0");
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
      ->capture_default_str();

  std::vector<std::string> plugins;
  auto add_plugin_option = [&](CLI::App* command) {
    command->add_option("--plugin", plugins, "load coroutines from this shared library")
        ->check(CLI::ExistingFile);
  };

  RunOptions run;
  auto* run_command = app.add_subcommand("run", "run a graph to completion");
  run_command->add_option("graph", run.graph, "graph file")->required();
  run_command->add_option("--input", run.input, "JSON lines for the `input` source (default stdin)")
      ->check(CLI::ExistingFile);
  run_command->add_option("--threads", run.threads, "threads running the event loop")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  run_command->add_flag("--records", run.records, "print {\"id\",\"node\",\"value\"} records");
  run_command->add_flag("--stats", run.stats, "print per-node counts and timings at exit");
  run_command->add_flag("--progress", run.progress,
                        "progress line on stderr (default: when stderr is a terminal)");
  add_plugin_option(run_command);

  std::vector<std::string> validate_files;
  auto* validate_command = app.add_subcommand("validate", "load and check graph files");
  validate_command->add_option("graphs", validate_files, "graph files")->required();
  add_plugin_option(validate_command);

  std::string dot_file;
  auto* dot_command = app.add_subcommand("dot", "print a graph in Graphviz DOT");
  dot_command->add_option("graph", dot_file, "graph file")->required();
  add_plugin_option(dot_command);

  bool list_json = false;
  auto* list_command = app.add_subcommand("list", "list the registered coroutines");
  list_command->add_flag("--json", list_json, "as JSON");
  add_plugin_option(list_command);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kExitOk : kExitInvalid;
  }
  spdlog::set_level(spdlog::level::from_str(log_level));

  Registry registry = Registry::with_builtins();
  try {
    for (const auto& plugin : plugins)
      load_plugin(plugin, registry);
  } catch (const UsageError& e) {
    std::cerr << "plumber: " << e.what() << '\n';
    return kExitInvalid;
  }
  // A worker process of a `procs` node: this program, re-executed.
  if (auto code = run_worker_if_requested(registry)) return *code;

  if (*run_command) return run_graph(run, registry);
  if (*validate_command) return validate(validate_files, registry);
  if (*dot_command) return dot(dot_file, registry);
  return list(list_json, registry);
}

}  // namespace plumber::cli
