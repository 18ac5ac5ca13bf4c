#pragma once
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "plumber/graph_spec.hpp"
#include "plumber/message.hpp"
#include "plumber/pipeline.hpp"

namespace plumber::detail {

/// Records a run as Chrome trace events (the JSON that Perfetto and
/// chrome://tracing open; docs/cli.md, `--trace`): a track per node (the
/// pipeline is process 1, each node a thread of it), a span per call of a
/// step, a track per worker process with a span per batch it ran, and flow
/// arrows from node to node for sampled messages. Used on the pipeline's
/// strand only; written once the pipeline is done.
class Tracer {
 public:
  Tracer(const GraphSpec& graph, TraceOptions options);

  /// One call of `node`'s step on `batch`, from `started` for `ns`. A worker
  /// process that ran it (worker_pid != 0) gets a span of its own.
  void step(std::string_view node, Clock::time_point started, std::uint64_t ns,
            std::span<const Message> batch, bool failed, int worker_pid = 0,
            std::uint64_t worker_started_ns = 0, std::uint64_t worker_finished_ns = 0);

  /// The trace: `{"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}}`.
  void write(std::ostream& out) const;

 private:
  struct Span {
    std::uint64_t start_ns;  ///< since the tracer began (CLOCK_MONOTONIC for workers' too)
    std::uint64_t duration_ns;
    std::uint64_t first_id;
    std::uint32_t node;
    std::uint32_t size;
    std::int32_t pid;  ///< 0: the step, on the node's track; else a worker process
    bool failed;
  };
  struct Flow {
    std::uint64_t id;  ///< (message id, from node, to node), one number
    std::uint64_t ts_ns;
    std::uint32_t node;
    bool start;  ///< leaves `node` (else arrives there)
  };
  bool room(std::size_t events);

  const GraphSpec& graph_;
  TraceOptions options_;
  std::int64_t origin_ns_;  ///< steady clock at construction, in ns
  std::unordered_map<std::string_view, std::uint32_t> index_;
  std::vector<Span> spans_;
  std::vector<Flow> flows_;
  std::unordered_map<int, std::uint32_t> workers_;  ///< pid -> node
  std::uint64_t dropped_ = 0;
};

}  // namespace plumber::detail
