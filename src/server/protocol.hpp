#pragma once
/// The WebSocket protocol of `plumber serve` (docs/protocol.md): parsing client
/// frames and building server frames. No Beast here, so the unit tests can
/// check every frame without a socket.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "plumber/error.hpp"
#include "plumber/json.hpp"
#include "plumber/pipeline.hpp"
#include "plumber/processor.hpp"

namespace plumber::server {

/// What a client asks for.
enum class Op {
  submit,  // start a run of a graph, inline or by name
  input,   // feed one value (or several) to a run's `input` source
  end,     // no more input for a run
  cancel,  // cancel a run: in-flight messages are reported as cancelled
  stop,    // stop a run gracefully: its sources stop producing and it drains
  stats,   // the per-node counters of a run, now
  watch,   // every run and /v1 pipeline on the server, pushed every interval_ms
  unwatch  // stop pushing watch frames
};

std::string_view to_string(Op op) noexcept;

/// One parsed client frame.
struct Command {
  Op op = Op::submit;
  std::uint64_t run = 0;  ///< input, end, cancel, stats
  json ref;               ///< echoed in the replies to this request; null when absent
  json graph;             ///< submit: inline graph document (null when by name)
  std::string name;       ///< submit: graph name from --graphs
  std::uint32_t stats_ms =
      0;                     ///< submit: push stats every this many ms (0: never); watch: interval
  bool trace = false;        ///< submit: send a Chrome trace of the run before "done"
  std::vector<json> values;  ///< input: the value, or the values of "values"
};

/// A request the server refuses, or a problem with a frame.
struct ProtocolError {
  std::string code;     ///< stable id, e.g. "protocol.unknown_op"
  std::string message;  ///< what is wrong
  std::string pointer;  ///< JSON pointer into the frame (or the graph), may be empty
  std::string hint;     ///< how to fix it, may be empty
  std::vector<Diagnostic> diagnostics;  ///< every graph diagnostic, for graph errors
  json ref;                             ///< the frame's "ref", when it could be read
};

/// Parses one text frame. Never throws.
std::variant<Command, ProtocolError> parse_request(std::string_view text);

/// The refusal of a graph that does not load.
ProtocolError graph_error(const GraphError& error);

// --- server frames -----------------------------------------------------------
// Each returns the frame's JSON; `ref` is omitted when null, `run` when 0.

json error_frame(const ProtocolError& error, std::uint64_t run = 0, const json& ref = nullptr);
json accepted_frame(std::uint64_t run, const json& ref, const std::string& name,
                    const GraphSpec& graph);
/// Binary data described, never sent inside JSON: [{"size", "sha256"}] in order.
json blob_descriptions(const std::vector<Blob>& blobs);
/// An output record: "output" for a value (with its blobs' descriptions when it
/// carries any), "failed" for an error or a cancellation.
json record_frame(std::uint64_t run, const OutputRecord& record);
json stats_frame(std::uint64_t run, const std::vector<ProcessorStats>& stats);

/// How a run ended.
struct RunSummary {
  std::string status;  ///< "completed" or "cancelled"
  std::string reason;  ///< why it was cancelled; empty when completed
  std::uint64_t outputs = 0;
  std::uint64_t failed = 0;
  std::uint64_t cancelled = 0;
};
json done_frame(std::uint64_t run, const RunSummary& summary,
                const std::vector<ProcessorStats>& stats);
json shutdown_frame(const std::string& reason, std::int64_t grace_ms);

/// Per-node counters as JSON objects, in topological order.
json stats_json(const std::vector<ProcessorStats>& stats);
/// The shape of a graph for drawing: name, nodes, edges, topological order.
json graph_shape(const std::string& name, const GraphSpec& graph);

/// One JSON text, invalid UTF-8 replaced (a value may carry any bytes).
std::string dump(const json& frame);

}  // namespace plumber::server
