#pragma once

#include "plumber/graph_spec.hpp"
#include "plumber/pipeline.hpp"
#include "plumber/registry.hpp"

namespace plumber {

/// Builds pipelines: one Processor per node of a graph, bounded Asio channels
/// between them, each step made by the coroutine the node names.
class Plumber {
 public:
  explicit Plumber(const Registry& registry) : registry_(registry) {}

  /// Builds (does not start) a pipeline that will run on a strand of `executor`.
  /// Throws GraphError when the graph names something the registry lacks.
  Pipeline build(const GraphSpec& graph, boost::asio::any_io_executor executor,
                 PipelineOptions options = {}) const;

 private:
  const Registry& registry_;
};

}  // namespace plumber
