#include "server/metrics.hpp"

#include <algorithm>
#include <limits>
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

/// A histogram from per-bucket counts (not cumulative) with the bounds `upper`;
/// `count` also holds what is above every bound.
template <typename Counts, typename Bounds>
ClientMetric histogram(std::vector<ClientMetric::Label> labels, const Counts& counts,
                       const Bounds& upper, std::uint64_t count, double sum) {
  ClientMetric h;
  h.label = std::move(labels);
  h.histogram.sample_count = count;
  h.histogram.sample_sum = sum;
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    h.histogram.bucket.push_back({cumulative, static_cast<double>(upper[i])});
  }
  h.histogram.bucket.push_back(
      {std::max(count, cumulative), std::numeric_limits<double>::infinity()});
  return h;
}

/// Adds a run's remote-node counters to a series' totals.
void add_remote(std::optional<RemoteStats>& total, const RemoteStats& r) {
  if (!total) total.emplace();
  RemoteStats& t = *total;
  t.sent += r.sent;
  t.acked += r.acked;
  t.redelivered += r.redelivered;
  t.duplicates += r.duplicates;
  t.claimed += r.claimed;
  t.dead_lettered += r.dead_lettered;
  t.in_flight += r.in_flight;
  t.rtt_ns += r.rtt_ns;
  for (std::size_t i = 0; i < t.rtt_buckets.size(); ++i)
    t.rtt_buckets[i] += r.rtt_buckets[i];
  for (const auto& w : r.workers)
    if (std::find(t.workers.begin(), t.workers.end(), w) == t.workers.end() &&
        t.workers.size() < 1024)
      t.workers.push_back(w);
}

}  // namespace

Metrics::Metrics() = default;
Metrics::~Metrics() = default;

void Metrics::NodeTotals::add(const ProcessorStats& s) {
  received += s.received;
  sent += s.emitted;
  errors += s.errors;
  skipped += s.skipped;
  expired += s.expired;
  retried += s.retried;
  cancelled += s.cancelled;
  calls += s.batches;
  batched += s.batched;
  busy_ns += s.busy_ns;
  waited += s.waited;
  wait_ns += s.wait_ns;
  for (std::size_t i = 0; i < buckets.size(); ++i) {
    buckets[i] += s.busy_buckets[i];
    wait_buckets[i] += s.wait_buckets[i];
  }
  for (std::size_t i = 0; i < batch_sizes.size(); ++i)
    batch_sizes[i] += s.batch_sizes[i];
  if (s.workers) {
    pool = true;
    restarts += s.workers->restarts;
    blob_bytes_copied += s.workers->blob_bytes_copied;
    blob_bytes_shared += s.workers->blob_bytes_shared;
    scale_ups += s.workers->scale_ups;
    scale_downs += s.workers->scale_downs;
  }
}

void Metrics::count_http(unsigned status) {
  std::lock_guard lock(mutex_);
  ++http_[status];
}

void Metrics::count_ws_error(const std::string& code) {
  std::lock_guard lock(mutex_);
  ++ws_errors_[code];
}

void Metrics::catalog_state(const std::string& graph, bool valid, std::uint64_t version) {
  std::lock_guard lock(mutex_);
  catalog_[graph] = {valid, version};
}

void Metrics::catalog_removed(const std::string& graph) {
  std::lock_guard lock(mutex_);
  catalog_.erase(graph);
}

void Metrics::count_reload(const std::string& result) {
  std::lock_guard lock(mutex_);
  ++reloads_[result];
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
    t.add(s);
    if (s.remote) {
      RemoteStats finished_run = *s.remote;
      finished_run.in_flight = 0;  // the run is over
      add_remote(t.remote, finished_run);
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

void Metrics::render_remote(const std::map<std::pair<std::string, std::string>, NodeTotals>& nodes,
                            std::vector<prometheus::MetricFamily>& families) {
  struct Counter {
    const char* name;
    const char* help;
    std::uint64_t RemoteStats::*field;
    MetricType type;
  };
  static const Counter counters[] = {
      {"plumber_remote_sent_total", "Messages sent to a remote node's task streams",
       &RemoteStats::sent, MetricType::Counter},
      {"plumber_remote_acked_total", "Messages of a remote node whose results came back",
       &RemoteStats::acked, MetricType::Counter},
      {"plumber_remote_redelivered_total", "Results of entries delivered more than once",
       &RemoteStats::redelivered, MetricType::Counter},
      {"plumber_remote_claimed_total", "Batches claimed from a silent worker (XAUTOCLAIM)",
       &RemoteStats::claimed, MetricType::Counter},
      {"plumber_remote_dead_lettered_total", "Batches past max_deliveries (dead letters)",
       &RemoteStats::dead_lettered, MetricType::Counter},
      {"plumber_remote_duplicates_total", "Results dropped: their request was already answered",
       &RemoteStats::duplicates, MetricType::Counter},
      {"plumber_remote_in_flight", "Messages sent to remote workers and not answered yet",
       &RemoteStats::in_flight, MetricType::Gauge},
  };
  for (const Counter& c : counters) {
    auto f = family(c.name, c.help, c.type);
    for (const auto& [key, t] : nodes)
      if (t.remote)
        f.metric.push_back(sample(static_cast<double>((*t.remote).*c.field), node_labels(key)));
    if (!f.metric.empty()) families.push_back(std::move(f));
  }
  auto workers = family("plumber_remote_workers_seen",
                        "Distinct remote workers (consumers) that answered", MetricType::Gauge);
  auto rtt =
      family("plumber_remote_round_trip_seconds",
             "Round trip of a batch to a remote worker (send to result)", MetricType::Histogram);
  for (const auto& [key, t] : nodes) {
    if (!t.remote) continue;
    workers.metric.push_back(
        sample(static_cast<double>(t.remote->workers.size()), node_labels(key)));
    ClientMetric h;
    h.label = node_labels(key);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < t.remote->rtt_buckets.size(); ++i) {
      cumulative += t.remote->rtt_buckets[i];
      h.histogram.bucket.push_back({cumulative, kStepSecondsBuckets[i]});
    }
    h.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
    h.histogram.sample_count = cumulative;
    h.histogram.sample_sum = static_cast<double>(t.remote->rtt_ns) / 1e9;
    rtt.metric.push_back(std::move(h));
  }
  if (workers.metric.empty()) return;  // no remote node: no families
  families.push_back(std::move(workers));
  families.push_back(std::move(rtt));
}

std::string Metrics::render() {
  std::vector<MetricFamily> families;
  {
    std::lock_guard lock(mutex_);
    // Node counters: finished runs' totals plus what live pipelines counted so far.
    std::map<std::pair<std::string, std::string>, NodeTotals> nodes = totals_;
    std::map<std::pair<std::string, std::string>, std::uint64_t> depth, pool_size;
    std::map<std::pair<std::string, std::string>, double> rate_in, rate_out;
    for (const auto& [key, tracked] : live_) {
      for (const auto& s : tracked.pipeline->stats()) {
        auto name = series(tracked.graph, s.node);
        NodeTotals& t = nodes[name];
        t.add(s);
        if (s.remote) add_remote(t.remote, *s.remote);
        if (s.workers) pool_size[name] += s.workers->procs;
        depth[name] += s.queue_depth;
        rate_in[name] += s.rate_in;
        rate_out[name] += s.rate_out;
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
                          "Messages passed on unchanged because the node's `when` rejected them",
                          MetricType::Counter);
    auto expired =
        family("plumber_node_expired_total",
               "Messages not processed because their deadline had passed", MetricType::Counter);
    auto retried = family("plumber_node_retried_total",
                          "Step calls repeated after a failure or a timeout", MetricType::Counter);
    auto cancelled =
        family("plumber_node_cancelled_total",
               "Messages dropped because their request was cancelled", MetricType::Counter);
    auto rate_in_family = family("plumber_node_in_per_second",
                                 "Messages a node took in per second over the last seconds, "
                                 "over live pipelines",
                                 MetricType::Gauge);
    auto rate_out_family = family("plumber_node_out_per_second",
                                  "Messages a node sent on per second over the last seconds, "
                                  "over live pipelines",
                                  MetricType::Gauge);
    auto batch_size = family("plumber_node_batch_size", "Messages per call of a node's step",
                             MetricType::Histogram);
    auto wait = family("plumber_node_wait_seconds",
                       "Time a message waited between its predecessor's send and this node's "
                       "receive (channel hops only; fused nodes wait for nothing)",
                       MetricType::Histogram);
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
    auto blobs_copied = family("plumber_worker_blob_bytes_copied_total",
                               "Blob bytes copied into shared memory on their way to or from a "
                               "node's worker processes",
                               MetricType::Counter);
    auto blobs_shared = family("plumber_worker_blob_bytes_shared_total",
                               "Blob bytes handed to or from a node's worker processes by "
                               "reference (already in shared memory)",
                               MetricType::Counter);
    for (const auto& [key, t] : nodes) {
      if (t.pool) {
        blobs_copied.metric.push_back(
            sample(static_cast<double>(t.blob_bytes_copied), node_labels(key)));
        blobs_shared.metric.push_back(
            sample(static_cast<double>(t.blob_bytes_shared), node_labels(key)));
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
      expired.metric.push_back(sample(static_cast<double>(t.expired), node_labels(key)));
      retried.metric.push_back(sample(static_cast<double>(t.retried), node_labels(key)));
      cancelled.metric.push_back(sample(static_cast<double>(t.cancelled), node_labels(key)));
      queue.metric.push_back(sample(static_cast<double>(depth[key]), node_labels(key)));
      rate_in_family.metric.push_back(sample(rate_in[key], node_labels(key)));
      rate_out_family.metric.push_back(sample(rate_out[key], node_labels(key)));
      // Calls that failed before they were timed count only in +Inf.
      busy.metric.push_back(histogram(node_labels(key), t.buckets, kStepSecondsBuckets, t.calls,
                                      static_cast<double>(t.busy_ns) / 1e9));
      wait.metric.push_back(histogram(node_labels(key), t.wait_buckets, kStepSecondsBuckets,
                                      t.waited, static_cast<double>(t.wait_ns) / 1e9));
      batch_size.metric.push_back(histogram(node_labels(key), t.batch_sizes, kBatchSizeBuckets,
                                            t.calls, static_cast<double>(t.batched)));
      if (t.pool) {
        restarts.metric.push_back(sample(static_cast<double>(t.restarts), node_labels(key)));
      }
    }
    for (auto* f : {&received, &sent, &errors, &skipped, &expired, &retried, &cancelled, &queue,
                    &rate_in_family, &rate_out_family, &busy, &wait, &batch_size, &restarts, &size,
                    &scaled, &blobs_copied, &blobs_shared})
      families.push_back(std::move(*f));
    render_remote(nodes, families);

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

    auto valid = family("plumber_catalog_graph_valid",
                        "1 when a --graphs file loaded at its last reload, 0 when it is broken "
                        "and its previous version keeps serving",
                        MetricType::Gauge);
    auto version = family("plumber_catalog_graph_version",
                          "The version of a --graphs graph now serving (1 at start, +1 per "
                          "applied change)",
                          MetricType::Gauge);
    for (const auto& [graph, state] : catalog_) {
      valid.metric.push_back(sample(state.first ? 1.0 : 0.0, {{"graph", graph}}));
      version.metric.push_back(sample(static_cast<double>(state.second), {{"graph", graph}}));
    }
    families.push_back(std::move(valid));
    families.push_back(std::move(version));
    auto reloads = family("plumber_catalog_reloads_total",
                          "Changed --graphs files seen by reloads, by result (applied, "
                          "rejected, removed)",
                          MetricType::Counter);
    for (const auto& [result, n] : reloads_)
      reloads.metric.push_back(sample(static_cast<double>(n), {{"result", result}}));
    families.push_back(std::move(reloads));
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
  gauge("plumber_upload_bytes_total", "Bytes of binary /v1 bodies received into shared memory",
        static_cast<double>(upload_bytes.load()), MetricType::Counter);
  gauge("plumber_upload_bytes_copied_total",
        "Bytes of binary /v1 bodies copied from the connection's read buffer (those that came "
        "with the header); the rest went from the socket straight into shared memory",
        static_cast<double>(upload_bytes_copied.load()), MetricType::Counter);
  gauge("plumber_upload_bytes_held",
        "Bytes of binary /v1 bodies held now (being received, or "
        "in a pipeline)",
        static_cast<double>(upload_bytes_held.load()), MetricType::Gauge);
  {
    auto uploads = family("plumber_uploads_total",
                          "Binary /v1 bodies by result: complete, or incomplete (the connection "
                          "ended before Content-Length bytes)",
                          MetricType::Counter);
    uploads.metric.push_back(
        sample(static_cast<double>(uploads_complete.load()), {{"result", "complete"}}));
    uploads.metric.push_back(
        sample(static_cast<double>(uploads_incomplete.load()), {{"result", "incomplete"}}));
    families.push_back(std::move(uploads));
  }

  families.push_back(build_info_metric());
  collect_process_metrics(families);

  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace plumber::server
