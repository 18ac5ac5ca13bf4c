#pragma once
// Metrics that are not about pipelines: the process (as Prometheus client
// libraries export them) and the build.
#include <vector>

#include <prometheus/metric_family.h>

namespace plumber::server {

/// process_cpu_seconds_total, process_resident_memory_bytes,
/// process_virtual_memory_bytes, process_open_fds, process_max_fds and
/// process_start_time_seconds, read from /proc like the Go and Python clients.
/// Appends nothing it cannot read.
void collect_process_metrics(std::vector<prometheus::MetricFamily>& families);

/// plumber_build_info{version, commit, boost, nlohmann_json, spdlog} 1.
prometheus::MetricFamily build_info_metric();

}  // namespace plumber::server
