// Tracer: a run as Chrome trace events (docs/cli.md, "Traces").
#include "runtime/tracer.hpp"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <ostream>
#include <unordered_set>

namespace plumber::detail {

namespace {

std::int64_t steady_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

/// Microseconds with nanosecond precision, as the format wants them.
std::string micros(std::uint64_t ns) {
  char text[32];
  std::snprintf(text, sizeof text, "%" PRIu64 ".%03u", ns / 1000, static_cast<unsigned>(ns % 1000));
  return text;
}

/// A JSON string (node ids are plain, graph names need not be).
std::string json_string(std::string_view text) {
  return json(std::string(text)).dump();
}

}  // namespace

Tracer::Tracer(const GraphSpec& graph, TraceOptions options)
    : graph_(graph), options_(options), origin_ns_(steady_ns(Clock::now())) {
  if (options_.sample_every == 0) options_.sample_every = 1;
  for (std::size_t i = 0; i < graph_.nodes.size(); ++i)
    index_.emplace(graph_.nodes[i].id, static_cast<std::uint32_t>(i));
}

bool Tracer::room(std::size_t events) {
  if (spans_.size() + flows_.size() + events <= options_.max_events) return true;
  dropped_ += events;
  return false;
}

void Tracer::step(std::string_view node, Clock::time_point started, std::uint64_t ns,
                  std::span<const Message> batch, bool failed, int worker_pid,
                  std::uint64_t worker_started_ns, std::uint64_t worker_finished_ns) {
  const auto found = index_.find(node);
  if (found == index_.end() || batch.empty()) return;
  const std::uint32_t index = found->second;
  const std::int64_t since = steady_ns(started) - origin_ns_;
  const std::uint64_t start = since > 0 ? static_cast<std::uint64_t>(since) : 0;
  const auto size = static_cast<std::uint32_t>(batch.size());
  if (!room(1)) return;
  spans_.push_back({start, ns, batch.front().id, index, size, 0, failed});
  if (worker_pid != 0 && worker_finished_ns >= worker_started_ns && room(1)) {
    const auto origin = static_cast<std::uint64_t>(origin_ns_);
    const std::uint64_t from = worker_started_ns > origin ? worker_started_ns - origin : 0;
    spans_.push_back({from, worker_finished_ns - worker_started_ns, batch.front().id, index, size,
                      worker_pid, failed});
    workers_.emplace(worker_pid, index);
  }
  // Sampled messages: one arrow per edge they cross, from the span of the
  // node that sent them to the span of the node that took them. Each end is
  // recorded where it is known (an arrow without its other end, from a source
  // or to a node that never got the message, is left out when written).
  const std::uint64_t nodes = graph_.nodes.size();
  const std::uint64_t mid = start + ns / 2;
  const auto& predecessors = graph_.predecessors[index];
  const auto& successors = graph_.successors[index];
  for (const Message& m : batch) {
    if (m.id % options_.sample_every != 1 % options_.sample_every) continue;
    if (!room(predecessors.size() + successors.size())) return;
    for (std::size_t from : predecessors)
      flows_.push_back({(m.id * nodes + from) * nodes + index, mid, index, false});
    for (std::size_t to : successors)
      flows_.push_back({(m.id * nodes + index) * nodes + to, mid, index, true});
  }
}

void Tracer::write(std::ostream& out) const {
  // Flows with both ends only: a message filtered out, or a predecessor that
  // is a source (no step, no span), leaves one end alone.
  std::unordered_set<std::uint64_t> starts, ends;
  for (const Flow& f : flows_)
    (f.start ? starts : ends).insert(f.id);

  out << "{\"traceEvents\":[\n";
  bool first = true;
  auto event = [&](const std::string& text) {
    out << (first ? "" : ",\n") << text;
    first = false;
  };
  event(R"({"ph":"M","name":"process_name","pid":1,"tid":0,"args":{"name":)" +
        json_string("plumber: " + graph_.name) + "}}");
  event(R"({"ph":"M","name":"process_sort_index","pid":1,"tid":0,"args":{"sort_index":0}})");
  for (std::size_t order = 0; order < graph_.topological_order.size(); ++order) {
    const std::size_t i = graph_.topological_order[order];
    const NodeSpec& node = graph_.nodes[i];
    const std::string tid = std::to_string(i + 1);
    event(R"({"ph":"M","name":"thread_name","pid":1,"tid":)" + tid + R"(,"args":{"name":)" +
          json_string(node.id + " (" + node.coroutine + ")") + "}}");
    event(R"({"ph":"M","name":"thread_sort_index","pid":1,"tid":)" + tid +
          R"(,"args":{"sort_index":)" + std::to_string(order) + "}}");
  }
  for (const auto& [pid, index] : workers_) {
    const std::string p = std::to_string(pid);
    event(R"({"ph":"M","name":"process_name","pid":)" + p + R"(,"tid":0,"args":{"name":)" +
          json_string("worker " + p + " of node " + graph_.nodes[index].id) + "}}");
    event(R"({"ph":"M","name":"thread_name","pid":)" + p + R"(,"tid":)" + p +
          R"(,"args":{"name":)" + json_string(graph_.nodes[index].id) + "}}");
  }
  for (const Span& s : spans_) {
    const NodeSpec& node = graph_.nodes[s.node];
    const std::string pid = s.pid ? std::to_string(s.pid) : "1";
    const std::string tid = s.pid ? pid : std::to_string(s.node + 1);
    event(R"({"ph":"X","cat":)" + std::string(s.pid ? "\"batch\"" : "\"step\"") + R"(,"name":)" +
          json_string(node.id) + R"(,"pid":)" + pid + R"(,"tid":)" + tid + R"(,"ts":)" +
          micros(s.start_ns) + R"(,"dur":)" + micros(s.duration_ns) + R"(,"args":{"batch":)" +
          std::to_string(s.size) + R"(,"first_id":)" + std::to_string(s.first_id) +
          (s.failed ? R"(,"failed":true)" : "") + "}}");
  }
  for (const Flow& f : flows_) {
    if (!starts.contains(f.id) || !ends.contains(f.id)) continue;
    event(std::string(R"({"ph":")") + (f.start ? "s" : "f") +
          R"(","cat":"message","name":"message","id":)" + std::to_string(f.id) +
          R"(,"pid":1,"tid":)" + std::to_string(f.node + 1) + R"(,"ts":)" + micros(f.ts_ns) +
          (f.start ? "" : R"(,"bp":"e")") + "}");
  }
  out << "\n],\"displayTimeUnit\":\"ns\",\"otherData\":{\"graph\":" << json_string(graph_.name)
      << ",\"sample_every\":" << options_.sample_every << ",\"max_events\":" << options_.max_events
      << ",\"dropped_events\":" << dropped_ << "}}\n";
}

}  // namespace plumber::detail
