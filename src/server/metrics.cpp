#include "server/metrics.hpp"

#include <sstream>

#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include "server/process_metrics.hpp"

namespace plumber::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

/// Distinct (graph, node) series kept before new ones are folded into one:
/// graph names come from clients, and must not grow the exposition without bound.
constexpr std::size_t kMaxSeries = 4096;

MetricFamily family(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

ClientMetric sample(double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  m.counter.value = value;
  m.gauge.value = value;
  m.untyped.value = value;
  return m;
}

std::vector<ClientMetric::Label> node_labels(const std::pair<std::string, std::string>& key) {
  return {{"graph", key.first}, {"node", key.second}};
}

}  // namespace

Metrics::Metrics() = default;
Metrics::~Metrics() = default;

void Metrics::count_http(unsigned status) {
  std::lock_guard lock(mutex_);
  ++http_[status];
}

void Metrics::count_ws_error(const std::string& code) {
  std::lock_guard lock(mutex_);
  ++ws_errors_[code];
}

void Metrics::count_ws_closed(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++ws_closed_[reason];
}

std::pair<std::string, std::string> Metrics::series(const std::string& graph,
                                                    const std::string& node) {
  std::pair<std::string, std::string> key{graph, node};
  if (totals_.size() >= kMaxSeries && !totals_.contains(key)) key = {"(other)", "(other)"};
  return key;
}

std::uint64_t Metrics::track(const std::string& graph, std::shared_ptr<Pipeline> pipeline) {
  std::lock_guard lock(mutex_);
  const std::uint64_t key = ++next_key_;
  for (const auto& node : pipeline->graph().nodes) {
    totals_.try_emplace(series(graph, node.id));
  }
  live_.emplace(key, Tracked{graph, std::move(pipeline)});
  return key;
}

void Metrics::finished(std::uint64_t key, const std::string& status) {
  std::lock_guard lock(mutex_);
  auto it = live_.find(key);
  if (it == live_.end()) return;
  for (const auto& s : it->second.pipeline->stats()) {
    NodeTotals& t = totals_[series(it->second.graph, s.node)];
    t.received += s.received;
    t.sent += s.emitted;
    t.errors += s.errors;
    t.skipped += s.skipped + s.expired;
    t.calls += s.batches;
    t.busy_ns += s.busy_ns;
    for (std::size_t i = 0; i < t.buckets.size(); ++i)
      t.buckets[i] += s.busy_buckets[i];
    if (s.workers) {
      t.pool = true;
      t.restarts += s.workers->restarts;
      t.scale_ups += s.workers->scale_ups;
      t.scale_downs += s.workers->scale_downs;
    }
  }
  ++runs_total_[status];
  live_.erase(it);
}

void Metrics::observe_process(const std::string& graph, unsigned status, double seconds) {
  std::lock_guard lock(mutex_);
  ++process_requests_[{graph, status}];
  auto& histogram = process_seconds_[graph];
  if (!histogram) {
    histogram = std::make_unique<prometheus::Histogram>(
        prometheus::Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
  }
  histogram->Observe(seconds);
}

std::string Metrics::render() {
  std::vector<MetricFamily> families;
  {
    std::lock_guard lock(mutex_);
    // Node counters: finished runs' totals plus what live pipelines counted so far.
    std::map<std::pair<std::string, std::string>, NodeTotals> nodes = totals_;
    std::map<std::pair<std::string, std::string>, std::uint64_t> depth, pool_size;
    for (const auto& [key, tracked] : live_) {
      for (const auto& s : tracked.pipeline->stats()) {
        auto name = series(tracked.graph, s.node);
        NodeTotals& t = nodes[name];
        t.received += s.received;
        t.sent += s.emitted;
        t.errors += s.errors;
        t.skipped += s.skipped + s.expired;
        t.calls += s.batches;
        t.busy_ns += s.busy_ns;
        for (std::size_t i = 0; i < t.buckets.size(); ++i)
          t.buckets[i] += s.busy_buckets[i];
        if (s.workers) {
          t.pool = true;
          t.restarts += s.workers->restarts;
          t.scale_ups += s.workers->scale_ups;
          t.scale_downs += s.workers->scale_downs;
          pool_size[name] += s.workers->procs;
        }
        depth[name] += s.queue_depth;
      }
    }
    auto received =
        family("plumber_node_received_total",
               "Messages a node took from its input (emitted, for a source)", MetricType::Counter);
    auto sent = family("plumber_node_sent_total", "Messages a node sent on, or output as a sink",
                       MetricType::Counter);
    auto errors = family("plumber_node_errors_total",
                         "Error records of a node (step failures, timeouts)", MetricType::Counter);
    auto skipped = family("plumber_node_skipped_total",
                          "Messages passed unchanged (when) or skipped (deadline passed)",
                          MetricType::Counter);
    auto queue = family("plumber_node_queue_depth",
                        "Messages waiting in a node's input channel, over live pipelines",
                        MetricType::Gauge);
    auto busy =
        family("plumber_node_processing_seconds",
               "Time inside a node's step per call (a batch is one call)", MetricType::Histogram);
    auto restarts = family("plumber_worker_restarts_total",
                           "Worker processes restarted, per worker pool (node with procs)",
                           MetricType::Counter);
    auto size = family("plumber_worker_pool_size",
                       "Worker processes (or exec program copies) running now, per node with "
                       "procs, over live pipelines",
                       MetricType::Gauge);
    auto scaled = family("plumber_worker_scale_events_total",
                         "Changes of an auto-scaled pool's size (procs: {min, max}), by direction",
                         MetricType::Counter);
    for (const auto& [key, t] : nodes) {
      if (t.pool) {
        size.metric.push_back(sample(static_cast<double>(pool_size[key]), node_labels(key)));
        auto labels = node_labels(key);
        labels.push_back({"direction", "up"});
        scaled.metric.push_back(sample(static_cast<double>(t.scale_ups), labels));
        labels.back().value = "down";
        scaled.metric.push_back(sample(static_cast<double>(t.scale_downs), labels));
      }
    }
    for (const auto& [key, t] : nodes) {
      received.metric.push_back(sample(static_cast<double>(t.received), node_labels(key)));
      sent.metric.push_back(sample(static_cast<double>(t.sent), node_labels(key)));
      errors.metric.push_back(sample(static_cast<double>(t.errors), node_labels(key)));
      skipped.metric.push_back(sample(static_cast<double>(t.skipped), node_labels(key)));
      queue.metric.push_back(sample(static_cast<double>(depth[key]), node_labels(key)));
      ClientMetric h;
      h.label = node_labels(key);
      h.histogram.sample_count = t.calls;
      h.histogram.sample_sum = static_cast<double>(t.busy_ns) / 1e9;
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i < t.buckets.size(); ++i) {
        cumulative += t.buckets[i];
        h.histogram.bucket.push_back({cumulative, kStepSecondsBuckets[i]});
      }
      // Calls that failed before they were timed count only here.
      h.histogram.bucket.push_back({t.calls, std::numeric_limits<double>::infinity()});
      busy.metric.push_back(std::move(h));
      if (t.pool) {
        restarts.metric.push_back(sample(static_cast<double>(t.restarts), node_labels(key)));
      }
    }
    for (auto* f : {&received, &sent, &errors, &skipped, &queue, &busy, &restarts, &size, &scaled})
      families.push_back(std::move(*f));

    auto runs_total =
        family("plumber_runs_total", "WebSocket runs that ended, by status", MetricType::Counter);
    for (const auto& [status, n] : runs_total_)
      runs_total.metric.push_back(sample(static_cast<double>(n), {{"status", status}}));
    families.push_back(std::move(runs_total));

    auto http = family("plumber_http_requests_total", "HTTP responses, by status code",
                       MetricType::Counter);
    for (const auto& [status, n] : http_)
      http.metric.push_back(sample(static_cast<double>(n), {{"code", std::to_string(status)}}));
    families.push_back(std::move(http));

    auto ws_errors = family("plumber_ws_errors_total",
                            "Error frames sent to WebSocket clients, by code", MetricType::Counter);
    for (const auto& [code, n] : ws_errors_)
      ws_errors.metric.push_back(sample(static_cast<double>(n), {{"code", code}}));
    families.push_back(std::move(ws_errors));

    auto ws_closed = family("plumber_ws_closed_total", "WebSocket connections closed, by reason",
                            MetricType::Counter);
    for (const auto& [reason, n] : ws_closed_)
      ws_closed.metric.push_back(sample(static_cast<double>(n), {{"reason", reason}}));
    families.push_back(std::move(ws_closed));

    auto requests = family("plumber_process_requests_total",
                           "POST /v1/graphs/NAME/process requests, by graph and status code",
                           MetricType::Counter);
    for (const auto& [key, n] : process_requests_) {
      requests.metric.push_back(sample(
          static_cast<double>(n), {{"graph", key.first}, {"code", std::to_string(key.second)}}));
    }
    families.push_back(std::move(requests));

    auto latency =
        family("plumber_process_seconds", "Latency of POST /v1/graphs/NAME/process, by graph",
               MetricType::Histogram);
    for (const auto& [graph, histogram] : process_seconds_) {
      ClientMetric m = histogram->Collect();
      m.label = {{"graph", graph}};
      latency.metric.push_back(std::move(m));
    }
    families.push_back(std::move(latency));
  }

  auto gauge = [&](const char* name, const char* help, double value, MetricType type) {
    auto f = family(name, help, type);
    f.metric.push_back(sample(value));
    families.push_back(std::move(f));
  };
  // A gauge is never named like a counter's family (plumber_connections_total
  // is the family plumber_connections under OpenMetrics).
  gauge("plumber_connections_open", "Open TCP connections (HTTP and WebSocket)",
        static_cast<double>(connections.load()), MetricType::Gauge);
  gauge("plumber_connections_total", "TCP connections accepted",
        static_cast<double>(connections_total.load()), MetricType::Counter);
  gauge("plumber_connections_refused_total", "TCP connections refused over --max-connections",
        static_cast<double>(connections_refused.load()), MetricType::Counter);
  gauge("plumber_websockets", "Open WebSocket sessions", static_cast<double>(websockets.load()),
        MetricType::Gauge);
  gauge("plumber_runs_active", "WebSocket runs going on", static_cast<double>(runs.load()),
        MetricType::Gauge);
  gauge("plumber_ws_frames_received_total", "WebSocket frames received",
        static_cast<double>(frames_received.load()), MetricType::Counter);
  gauge("plumber_ws_frames_sent_total", "WebSocket frames sent",
        static_cast<double>(frames_sent.load()), MetricType::Counter);
  gauge("plumber_ws_send_queue_bytes", "Bytes queued for WebSocket clients, not yet written",
        static_cast<double>(send_queue_bytes.load()), MetricType::Gauge);

  families.push_back(build_info_metric());
  collect_process_metrics(families);

  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace plumber::server
