// Plumber::build: one processor per node, connected, fused where it can be.
#include "plumber/plumber.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include "plumber/error.hpp"
#include "plumber/registry.hpp"
#include "runtime/pipeline_core.hpp"
#include "runtime/source_processor.hpp"
#include "runtime/transform_processor.hpp"

namespace plumber {
namespace {

/// Operator fusion. Every node runs in a coroutine: its own, or, when it is a
/// synchronous step without batching whose predecessors all run in one
/// coroutine, theirs: a chain, a fan-out or a diamond of such steps then costs
/// function calls instead of channel hops. The predecessors must share one
/// coroutine (`driver`) because a fused node is driven by one caller at a time.
void fuse_where_possible(detail::PipelineCore& core) {
  const GraphSpec& spec = core.graph();
  std::vector<std::size_t> driver(spec.nodes.size());
  for (std::size_t node : spec.topological_order) {
    driver[node] = node;
    const auto& predecessors = spec.predecessors[node];
    auto* successor = dynamic_cast<detail::TransformProcessor*>(core.processors[node].get());
    if (predecessors.empty() || !successor || !successor->fusible()) continue;
    const bool one_driver = std::all_of(predecessors.begin(), predecessors.end(), [&](auto p) {
      return core.processors[p]->may_fuse() && driver[p] == driver[predecessors.front()];
    });
    if (!one_driver) continue;
    driver[node] = driver[predecessors.front()];
    for (std::size_t p : predecessors)
      core.processors[p]->fuse(*successor);
  }
}

}  // namespace

// --- Plumber -----------------------------------------------------------------

Pipeline Plumber::build(const GraphSpec& graph, boost::asio::any_io_executor executor,
                        PipelineOptions options) const {
  auto core = std::make_shared<detail::PipelineCore>(graph, executor, options);
  const GraphSpec& spec = core->graph();
  std::vector<Diagnostic> missing;
  for (std::size_t i = 0; i < spec.nodes.size(); ++i) {
    const NodeSpec& node = spec.nodes[i];
    // A loaded graph carries what loading resolved; only a spec made by hand
    // is looked up here.
    auto info = node.info ? node.info : registry_.find_shared(node.coroutine);
    auto when = node.when_info || node.when.empty() ? node.when_info
                                                    : registry_.find_predicate_shared(node.when);
    if (!info) {
      missing.push_back({"graph.unknown_coroutine", "/nodes/" + std::to_string(i) + "/coroutine",
                         "unknown coroutine \"" + node.coroutine + "\"", ""});
      continue;
    }
    if (!node.when.empty() && !when) {
      missing.push_back({"graph.unknown_predicate", "/nodes/" + std::to_string(i) + "/when",
                         "unknown predicate \"" + node.when + "\"", ""});
      continue;
    }
    core->resolved.push_back(info);
    core->resolved_predicates.push_back(when);
    if (info->kind == CoroutineKind::source) {
      auto source = std::make_unique<detail::SourceProcessor>(*core, node, *info);
      if (info->capabilities.host_fed) {
        core->input_feed = std::make_shared<detail::FeedQueue>(core->strand(), node);
        core->feeds.push_back(core->input_feed);
        source->set_feed(core->input_feed);
      }
      core->processors.push_back(std::move(source));
    } else {
      core->processors.push_back(
          std::make_unique<detail::TransformProcessor>(*core, node, *info, when.get()));
    }
  }
  if (!missing.empty()) throw GraphError(spec.file, std::move(missing));

  for (std::size_t to = 0; to < spec.nodes.size(); ++to) {
    const auto& predecessors = spec.predecessors[to];
    for (std::size_t port = 0; port < predecessors.size(); ++port) {
      core->processors[predecessors[port]]->connect(*core->processors[to],
                                                    static_cast<std::uint16_t>(port));
    }
  }
  // A node feeds a zip when a zip is downstream of it: it must then announce the
  // ids it drops, or the zip would wait for them forever.
  std::vector<bool> feeds_zip(spec.nodes.size(), false);
  for (auto it = spec.topological_order.rbegin(); it != spec.topological_order.rend(); ++it) {
    for (std::size_t next : spec.successors[*it]) {
      if (spec.nodes[next].join == JoinPolicy::zip || feeds_zip[next]) feeds_zip[*it] = true;
    }
    if (feeds_zip[*it]) core->processors[*it]->set_feeds_zip();
  }
  fuse_where_possible(*core);
  return Pipeline(std::move(core));
}

}  // namespace plumber
