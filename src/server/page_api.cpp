// The palette and live validation behind the web page's editor.
#include "server/page_api.hpp"

#include "server/protocol.hpp"

namespace plumber::server {
namespace {

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

json diagnostics_json(const std::vector<Diagnostic>& diagnostics) {
  json all = json::array();
  for (const Diagnostic& d : diagnostics) {
    json one = json::object();
    one["code"] = d.code;
    one["pointer"] = d.pointer;
    one["message"] = d.message;
    one["hint"] = d.hint;
    all.push_back(std::move(one));
  }
  return all;
}

json refused(std::vector<Diagnostic> diagnostics) {
  json body = json::object();
  body["ok"] = false;
  body["diagnostics"] = diagnostics_json(diagnostics);
  return body;
}

}  // namespace

json palette_json(const Registry& registry) {
  json coroutines = json::array();
  for (const CoroutineInfo* info : registry.coroutines()) {
    json one = json::object();
    one["name"] = info->name;
    one["kind"] = std::string(to_string(info->kind));
    one["description"] = info->description;
    one["params"] = params_json(info->params);
    one["worker_capable"] = info->worker_capable;
    one["accepts"] = info->kind == CoroutineKind::source ? "" : info->accepts.to_string();
    one["emits"] = info->kind == CoroutineKind::sink ? ""
                   : info->emits_input_type          ? "same as input"
                                                     : info->emits.to_string();
    coroutines.push_back(std::move(one));
  }
  json predicates = json::array();
  for (const PredicateInfo* info : registry.predicates()) {
    json one = json::object();
    one["name"] = info->name;
    one["description"] = info->description;
    predicates.push_back(std::move(one));
  }
  json body = json::object();
  body["coroutines"] = std::move(coroutines);
  body["predicates"] = std::move(predicates);
  return body;
}

json validation_json(const json& document, const Registry& registry, const GraphLimits& limits) {
  auto too_big = check_graph_size(document, limits);
  if (!too_big.empty()) return refused(std::move(too_big));
  try {
    GraphSpec spec = graph_from_json(document, registry, "<draft>");
    apply_graph_policy(spec, limits);
    json body = json::object();
    body["ok"] = true;
    body["graph"] = graph_shape(spec.name, spec);
    return body;
  } catch (const GraphError& e) {
    return refused(e.diagnostics());
  }
}

}  // namespace plumber::server
