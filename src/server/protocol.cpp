#include "server/protocol.hpp"

#include <algorithm>
#include <array>
#include <limits>

#include "json_parse.hpp"
#include "plumber/graph_spec.hpp"
#include "registry/edit_distance.hpp"
#include "sha256.hpp"

namespace plumber::server {
namespace {

constexpr std::array<std::string_view, 8> kOps = {"submit", "input", "end",   "cancel",
                                                  "stop",   "stats", "watch", "unwatch"};

std::string type_name(const json& value) {
  if (value.is_number_unsigned() || value.is_number_integer()) return "integer";
  if (value.is_number_float()) return "number";
  return value.type_name();
}

using detail::edit_distance;

template <class Choices>
std::string did_you_mean(std::string_view name, const Choices& choices) {
  std::string_view best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (std::string_view choice : choices) {
    const std::size_t distance = edit_distance(name, choice);
    if (distance < best_distance) {
      best_distance = distance;
      best = choice;
    }
  }
  if (best_distance > std::max<std::size_t>(2, name.size() / 3)) return {};
  return "did you mean \"" + std::string(best) + "\"?";
}

ProtocolError problem(std::string code, std::string pointer, std::string message,
                      std::string hint = {}) {
  ProtocolError e;
  e.code = std::move(code);
  e.pointer = std::move(pointer);
  e.message = std::move(message);
  e.hint = std::move(hint);
  return e;
}

/// The fields each op accepts, besides "op" and "ref".
std::vector<std::string_view> fields_of(Op op) {
  switch (op) {
    case Op::submit:
      return {"graph", "name", "stats_ms", "trace"};
    case Op::input:
      return {"run", "value", "values"};
    case Op::end:
    case Op::cancel:
    case Op::stop:
    case Op::stats:
      return {"run"};
    case Op::watch:
      return {"interval_ms"};
    case Op::unwatch:
      return {};
  }
  return {};
}

std::optional<ProtocolError> read_run(const json& frame, Command& request) {
  auto it = frame.find("run");
  if (it == frame.end()) {
    return problem("protocol.missing_field", "",
                   "\"" + std::string(to_string(request.op)) + "\" needs the field \"run\"",
                   "the run id from the \"accepted\" frame");
  }
  if (!it->is_number_unsigned() || it->get<std::uint64_t>() == 0) {
    return problem("protocol.wrong_type", "/run",
                   "\"run\" must be a positive integer, not " +
                       (it->is_number() ? it->dump() : type_name(*it)));
  }
  request.run = it->get<std::uint64_t>();
  return std::nullopt;
}

std::optional<ProtocolError> read_submit(const json& frame, Command& request) {
  auto graph = frame.find("graph");
  auto name = frame.find("name");
  if ((graph == frame.end()) == (name == frame.end())) {
    return problem(graph == frame.end() ? "protocol.missing_field" : "protocol.conflicting_fields",
                   "", "\"submit\" needs exactly one of \"graph\" (a graph document) or \"name\"",
                   "\"name\" is a graph file of the server's --graphs directory, without .json");
  }
  if (graph != frame.end()) {
    if (!graph->is_object()) {
      return problem("protocol.wrong_type", "/graph",
                     "\"graph\" must be an object (a graph document), not " + type_name(*graph));
    }
    request.graph = *graph;
  } else {
    if (!name->is_string()) {
      return problem("protocol.wrong_type", "/name",
                     "\"name\" must be a string, not " + type_name(*name));
    }
    request.name = name->get<std::string>();
  }
  if (auto stats = frame.find("stats_ms"); stats != frame.end()) {
    if (!stats->is_number_unsigned() || stats->get<std::uint64_t>() > 60'000 ||
        (stats->get<std::uint64_t>() != 0 && stats->get<std::uint64_t>() < 50)) {
      return problem(
          "protocol.out_of_range", "/stats_ms",
          "\"stats_ms\" must be 0 (never) or an integer from 50 to 60000, not " + stats->dump());
    }
    request.stats_ms = stats->get<std::uint32_t>();
  }
  if (auto trace = frame.find("trace"); trace != frame.end()) {
    if (!trace->is_boolean()) {
      return problem("protocol.wrong_type", "/trace",
                     "\"trace\" must be true or false, not " + type_name(*trace));
    }
    request.trace = trace->get<bool>();
  }
  return std::nullopt;
}

std::optional<ProtocolError> read_input(const json& frame, Command& request) {
  auto value = frame.find("value");
  auto values = frame.find("values");
  if ((value == frame.end()) == (values == frame.end())) {
    return problem(value == frame.end() ? "protocol.missing_field" : "protocol.conflicting_fields",
                   "", "\"input\" needs exactly one of \"value\" or \"values\" (an array)");
  }
  if (value != frame.end()) {
    request.values.push_back(*value);
    return std::nullopt;
  }
  if (!values->is_array()) {
    return problem("protocol.wrong_type", "/values",
                   "\"values\" must be an array, not " + type_name(*values));
  }
  request.values.assign(values->begin(), values->end());
  return std::nullopt;
}

}  // namespace

std::string_view to_string(Op op) noexcept {
  return kOps[static_cast<std::size_t>(op)];
}

namespace {

std::variant<Command, ProtocolError> parse_frame(std::string_view text, json& ref_out) {
  json frame;
  try {
    frame = detail::parse_json(text);
  } catch (const detail::JsonParseError& e) {
    return problem("protocol.malformed", "", "frame is not JSON: " + std::string(e.what()));
  }
  if (!frame.is_object()) {
    return problem("protocol.not_object", "",
                   "a frame must be a JSON object with an \"op\", not " + type_name(frame));
  }
  Command request;
  if (auto ref = frame.find("ref"); ref != frame.end()) {
    if (ref->is_structured()) {
      return problem("protocol.wrong_type", "/ref",
                     "\"ref\" must be a string or a number, not " + type_name(*ref));
    }
    request.ref = *ref;
    ref_out = *ref;
  }
  auto op = frame.find("op");
  if (op == frame.end()) {
    return problem("protocol.missing_field", "", "a frame needs the field \"op\"",
                   "one of submit, input, end, cancel, stop, stats, watch, unwatch");
  }
  if (!op->is_string()) {
    return problem("protocol.wrong_type", "/op", "\"op\" must be a string, not " + type_name(*op));
  }
  const std::string name = op->get<std::string>();
  auto known = std::find(kOps.begin(), kOps.end(), name);
  if (known == kOps.end()) {
    std::string hint = did_you_mean(name, kOps);
    if (hint.empty()) hint = "one of submit, input, end, cancel, stop, stats, watch, unwatch";
    ProtocolError e =
        problem("protocol.unknown_op", "/op", "unknown op \"" + name + "\"", std::move(hint));
    return e;
  }
  request.op = static_cast<Op>(known - kOps.begin());

  const auto fields = fields_of(request.op);
  for (const auto& item : frame.items()) {
    const std::string& key = item.key();
    if (key == "op" || key == "ref") continue;
    if (std::find(fields.begin(), fields.end(), key) != fields.end()) continue;
    std::vector<std::string_view> choices = fields;
    return problem("protocol.unknown_field", (json::json_pointer() / key).to_string(),
                   "\"" + name + "\" has no field \"" + key + "\"", did_you_mean(key, choices));
  }

  std::optional<ProtocolError> error;
  switch (request.op) {
    case Op::submit:
      error = read_submit(frame, request);
      break;
    case Op::input:
      error = read_run(frame, request);
      if (!error) error = read_input(frame, request);
      break;
    case Op::end:
    case Op::cancel:
    case Op::stop:
    case Op::stats:
      error = read_run(frame, request);
      break;
    case Op::watch:
      if (auto interval = frame.find("interval_ms"); interval != frame.end()) {
        if (!interval->is_number_unsigned() || interval->get<std::uint64_t>() < 100 ||
            interval->get<std::uint64_t>() > 60'000) {
          error = problem(
              "protocol.out_of_range", "/interval_ms",
              "\"interval_ms\" must be an integer from 100 to 60000, not " + interval->dump());
        } else {
          request.stats_ms = interval->get<std::uint32_t>();
        }
      }
      break;
    case Op::unwatch:
      break;
  }
  if (error) return *error;
  return request;
}

}  // namespace

std::variant<Command, ProtocolError> parse_request(std::string_view text) {
  json ref;
  auto parsed = parse_frame(text, ref);
  if (auto* error = std::get_if<ProtocolError>(&parsed)) error->ref = std::move(ref);
  return parsed;
}

ProtocolError graph_error(const GraphError& error) {
  ProtocolError e;
  e.diagnostics = error.diagnostics();
  if (!e.diagnostics.empty()) {
    e.code = e.diagnostics.front().code;
    e.pointer = e.diagnostics.front().pointer;
    e.message = e.diagnostics.front().message;
    e.hint = e.diagnostics.front().hint;
  } else {
    e.code = "graph.invalid";
    e.message = error.what();
  }
  return e;
}

json error_frame(const ProtocolError& error, std::uint64_t run, const json& ref) {
  json frame = json::object();
  frame["type"] = "error";
  if (run != 0) frame["run"] = run;
  if (!ref.is_null()) {
    frame["ref"] = ref;
  } else if (!error.ref.is_null()) {
    frame["ref"] = error.ref;
  }
  frame["code"] = error.code;
  frame["message"] = error.message;
  if (!error.pointer.empty()) frame["pointer"] = error.pointer;
  if (!error.hint.empty()) frame["hint"] = error.hint;
  if (!error.diagnostics.empty()) {
    json all = json::array();
    for (const auto& d : error.diagnostics) {
      json one = json::object();
      one["code"] = d.code;
      one["pointer"] = d.pointer;
      one["message"] = d.message;
      if (!d.hint.empty()) one["hint"] = d.hint;
      all.push_back(std::move(one));
    }
    frame["diagnostics"] = std::move(all);
  }
  return frame;
}

json graph_shape(const std::string& name, const GraphSpec& graph) {
  json shape = json::object();
  shape["name"] = name;
  json nodes = json::array();
  for (const auto& node : graph.nodes) {
    json one = json::object();
    one["id"] = node.id;
    one["coroutine"] = node.coroutine;
    nodes.push_back(std::move(one));
  }
  json edges = json::array();
  for (const auto& edge : graph.edges) {
    json one = json::object();
    one["from"] = graph.nodes[edge.from].id;
    one["to"] = graph.nodes[edge.to].id;
    edges.push_back(std::move(one));
  }
  json order = json::array();
  for (std::size_t index : graph.topological_order)
    order.push_back(graph.nodes[index].id);
  shape["nodes"] = std::move(nodes);
  shape["edges"] = std::move(edges);
  shape["order"] = std::move(order);
  shape["input"] = graph.host_fed_input().has_value();
  return shape;
}

json accepted_frame(std::uint64_t run, const json& ref, const std::string& name,
                    const GraphSpec& graph) {
  json frame = json::object();
  frame["type"] = "accepted";
  frame["run"] = run;
  if (!ref.is_null()) frame["ref"] = ref;
  frame["graph"] = graph_shape(name, graph);
  return frame;
}

json blob_descriptions(const std::vector<Blob>& blobs) {
  json all = json::array();
  for (const Blob& blob : blobs) {
    json one = json::object();
    one["size"] = blob.size();
    one["sha256"] = detail::sha256_hex(blob.data(), blob.size());
    all.push_back(std::move(one));
  }
  return all;
}

json record_frame(std::uint64_t run, const OutputRecord& record) {
  json frame = json::object();
  const bool value = record.kind == OutputRecord::Kind::value;
  frame["type"] = value ? "output" : "failed";
  frame["run"] = run;
  frame["id"] = record.id;
  frame["node"] = std::string(record.node);
  if (value) {
    frame["value"] = record.value;
    if (!record.blobs.empty()) frame["blobs"] = blob_descriptions(record.blobs);
  } else {
    frame["code"] = record.kind == OutputRecord::Kind::cancelled ? "cancelled" : "step_failed";
    frame["message"] = record.error;
  }
  return frame;
}

json stats_json(const std::vector<ProcessorStats>& stats) {
  json all = json::array();
  for (const auto& s : stats) {
    json one = json::object();
    one["node"] = s.node;
    one["coroutine"] = s.coroutine;
    one["received"] = s.received;
    one["emitted"] = s.emitted;
    one["errors"] = s.errors;
    one["skipped"] = s.skipped;
    one["expired"] = s.expired;
    one["retried"] = s.retried;
    one["cancelled"] = s.cancelled;
    one["batches"] = s.batches;
    json sizes = json::object();  // upper bound -> calls, the buckets that have any
    for (std::size_t i = 0; i < s.batch_sizes.size(); ++i) {
      if (s.batch_sizes[i] > 0) sizes[std::to_string(kBatchSizeBuckets[i])] = s.batch_sizes[i];
    }
    one["batch_sizes"] = std::move(sizes);
    one["busy_ms"] = static_cast<double>(s.busy_ns) / 1e6;
    one["wait_ms"] =
        s.waited ? static_cast<double>(s.wait_ns) / 1e6 / static_cast<double>(s.waited) : 0.0;
    one["queue_depth"] = s.queue_depth;
    one["in_per_s"] = s.rate_in;
    one["out_per_s"] = s.rate_out;
    all.push_back(std::move(one));
  }
  return all;
}

json stats_frame(std::uint64_t run, const std::vector<ProcessorStats>& stats) {
  json frame = json::object();
  frame["type"] = "stats";
  frame["run"] = run;
  frame["stats"] = stats_json(stats);
  return frame;
}

json done_frame(std::uint64_t run, const RunSummary& summary,
                const std::vector<ProcessorStats>& stats) {
  json frame = json::object();
  frame["type"] = "done";
  frame["run"] = run;
  frame["status"] = summary.status;
  if (!summary.reason.empty()) frame["reason"] = summary.reason;
  frame["outputs"] = summary.outputs;
  frame["failed"] = summary.failed;
  frame["cancelled"] = summary.cancelled;
  frame["stats"] = stats_json(stats);
  return frame;
}

json shutdown_frame(const std::string& reason, std::int64_t grace_ms) {
  json frame = json::object();
  frame["type"] = "shutdown";
  frame["reason"] = reason;
  frame["grace_ms"] = grace_ms;
  return frame;
}

std::string dump(const json& frame) {
  return frame.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace plumber::server
