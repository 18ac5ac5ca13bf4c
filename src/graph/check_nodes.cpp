// Checking a graph document: the document, its settings, nodes and params.
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#include "graph/graph_checker.hpp"

namespace plumber::detail {

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
  for (NodeSpec& node : graph.nodes) {
    if (node.remote && node.remote->broker.empty()) node.remote->broker = graph.settings.broker;
  }

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
  unknown_fields(*settings, "/settings", {"queue_size", "priorities", "broker"});
  graph.settings.queue_size =
      static_cast<std::size_t>(integer(*settings, "/settings", "queue_size", 64, 1, kMaxCount));
  graph.settings.priorities =
      static_cast<std::size_t>(integer(*settings, "/settings", "priorities", 1, 1, 16));
  if (auto broker = string(*settings, "/settings", "broker", false)) {
    check_broker(*broker, "/settings/broker");
    graph.settings.broker = *broker;
  }
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
                  "kill_after_ms", "remote", "description"});

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
  check_procs(node, pointer, spec);
  const bool program = info && info->capabilities.runs_programs;
  if (program && spec.procs == 0) spec.procs = 1;  // an `exec` step runs one copy by default
  // A thread pool is only useful with as many messages in flight as threads.
  if (spec.threads > 0 && !node.contains("concurrency")) spec.concurrency = spec.threads;
  // Worker processes: a few batches queued per worker keep it busy while the
  // parent handles the results of the previous ones (as many as the largest
  // size of an auto-scaled pool).
  if (spec.procs > 0 && !node.contains("concurrency")) {
    spec.concurrency = 4 * (spec.autoscale ? spec.autoscale->max : spec.procs);
  }
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
    if (spec.procs == 0 && !program) {
      error("graph.kill_after_without_procs", pointer + "/kill_after_ms",
            "kill_after_ms applies to worker processes only",
            "add \"procs\", or use \"timeout_ms\"");
    }
  }
  if (node.contains("remote")) check_remote(node, pointer, spec);
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
    if (spec.procs > 0 && !info->worker_capable && !program) {
      error("graph.not_worker_capable", pointer + "/procs",
            "coroutine " + in_quotes(info->name) + " cannot run in a worker process",
            "it holds in-process state; use \"threads\" instead");
    } else if (spec.remote && !info->worker_capable && info->kind != CoroutineKind::source) {
      error("graph.not_worker_capable", pointer + "/remote",
            "coroutine " + in_quotes(info->name) + " cannot run on a remote worker",
            "it holds in-process state; run it on this machine");
    } else if (program && spec.threads > 0) {
      error("graph.threads_and_procs", pointer + "/threads",
            "an exec step runs in copies of its program, not on threads",
            "use \"procs\" for more copies");
    } else if (spec.procs > 0 && spec.threads > 0) {
      error("graph.threads_and_procs", pointer + "/procs",
            "a node runs its step either on threads or in worker processes, not both",
            "remove \"threads\" or \"procs\"");
    }
    if (info->kind == CoroutineKind::source) {
      for (const char* key : {"join", "when", "batch_size", "batch_timeout_ms", "concurrency",
                              "threads", "retries", "timeout_ms", "remote"}) {
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
  if (program && spec.params.contains("command")) check_program(spec, pointer);
  infos_.push_back(info);
  if (info) spec.info = registry_.find_shared(spec.coroutine);
  if (!spec.when.empty()) spec.when_info = registry_.find_predicate_shared(spec.when);
  // A batch is gathered from what waits in the input: the input holds at
  // least one batch (docs/graph-format.md).
  spec.queue_size = std::max(spec.queue_size, spec.batch_size);
  graph.nodes.push_back(std::move(spec));
}

void Checker::check_procs(const json& node, const std::string& pointer, NodeSpec& spec) {
  auto procs = node.find("procs");
  if (procs == node.end() || !procs->is_object()) {
    spec.procs = static_cast<std::size_t>(integer(node, pointer, "procs", 0, 0, 256));
    return;
  }
  const std::string where = pointer + "/procs";
  unknown_fields(*procs, where, {"min", "max", "scale_down_after_ms", "cooldown_ms"});
  if (!procs->contains("max")) {
    error("graph.missing_field", where, "missing required field \"max\"",
          "an auto-scaled pool is {\"min\": M, \"max\": N}");
  }
  ProcsScaling scaling;
  spec.procs = static_cast<std::size_t>(integer(*procs, where, "min", 1, 1, 256));
  scaling.max = static_cast<std::size_t>(
      integer(*procs, where, "max", static_cast<std::int64_t>(spec.procs), 1, 256));
  if (scaling.max < spec.procs) {
    error("graph.out_of_range", where + "/max",
          "max must be at least min (" + std::to_string(spec.procs) + "), not " +
              std::to_string(scaling.max));
    scaling.max = spec.procs;
  }
  scaling.scale_down_after = std::chrono::milliseconds(integer(
      *procs, where, "scale_down_after_ms", scaling.scale_down_after.count(), 1, 86'400'000));
  scaling.cooldown = std::chrono::milliseconds(
      integer(*procs, where, "cooldown_ms", scaling.cooldown.count(), 0, 3'600'000));
  spec.autoscale = scaling;
}

void Checker::check_program(NodeSpec& spec, const std::string& pointer) {
  const std::string params = pointer + "/params";
  if (auto command = spec.params.find("command"); command != spec.params.end()) {
    if (command->empty()) {
      error("graph.bad_param", params + "/command",
            "command must name a program: [\"PROGRAM\", \"ARG\", ...]",
            "e.g. [\"python3\", \"steps/score.py\"]");
    }
    for (std::size_t i = 0; i < command->size(); ++i) {
      const json& part = (*command)[i];
      if (!part.is_string()) {
        error("graph.bad_param", params + "/command/" + std::to_string(i),
              "each part of command must be a string, not " + type_name(part));
      } else if (part.get_ref<const std::string&>().find('\0') != std::string::npos ||
                 (i == 0 && part.get_ref<const std::string&>().empty())) {
        error("graph.bad_param", params + "/command/" + std::to_string(i),
              i == 0 ? "the program name must be a non-empty string without NUL"
                     : "an argument must not contain NUL");
      }
    }
  }
  // A graph file's programs are found next to it, wherever it is run from.
  std::error_code ec;
  const bool from_file = std::filesystem::is_regular_file(file_, ec);
  const std::filesystem::path base =
      from_file ? std::filesystem::absolute(file_, ec).parent_path() : std::filesystem::path();
  if (auto cwd = spec.params.find("cwd"); cwd != spec.params.end()) {
    if (!base.empty()) *cwd = (base / cwd->get<std::string>()).lexically_normal().string();
  } else if (!base.empty()) {
    spec.params["cwd"] = base.string();
  }
  if (auto env = spec.params.find("env"); env != spec.params.end()) {
    for (const auto& [key, value] : env->items()) {
      if (!value.is_string()) {
        error("graph.bad_param", child(params + "/env", key),
              "environment variable " + in_quotes(key) + " must be a string, not " +
                  type_name(value));
      } else if (key.empty() || key.find('=') != std::string::npos ||
                 key.find('\0') != std::string::npos) {
        error("graph.bad_param", child(params + "/env", key),
              "bad environment variable name " + in_quotes(key), "no '=' and not empty");
      }
    }
  }
}

namespace {

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

}  // namespace

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

}  // namespace plumber::detail
