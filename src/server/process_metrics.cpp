#include "server/process_metrics.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "build_info.hpp"

namespace plumber::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

void add(std::vector<MetricFamily>& families, std::string name, std::string help, MetricType type,
         double value) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  ClientMetric m;
  m.counter.value = value;
  m.gauge.value = value;
  f.metric.push_back(std::move(m));
  families.push_back(std::move(f));
}

/// The fields of /proc/self/stat after the command name (field 3 onwards).
std::optional<std::vector<std::string>> read_stat() {
  std::ifstream file("/proc/self/stat");
  std::string line;
  if (!std::getline(file, line)) return std::nullopt;
  // The command name is in parentheses and may hold spaces: start after the last ')'.
  const auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  std::vector<std::string> fields;
  for (std::string field; rest >> field;)
    fields.push_back(field);
  if (fields.size() < 22) return std::nullopt;
  return fields;
}

/// Seconds since the epoch at which the machine booted (`btime` of /proc/stat).
std::optional<double> boot_time() {
  std::ifstream file("/proc/stat");
  for (std::string key; file >> key;) {
    if (key == "btime") {
      double seconds = 0;
      if (file >> seconds) return seconds;
      return std::nullopt;
    }
    file.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return std::nullopt;
}

}  // namespace

void collect_process_metrics(std::vector<MetricFamily>& families) {
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
  if (auto stat = read_stat(); stat && ticks > 0) {
    // Field numbers of proc(5), minus 3 (the fields before the command name's end).
    const auto field = [&](int number) { return std::stod((*stat)[number - 3]); };
    add(families, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
        MetricType::Counter, (field(14) + field(15)) / ticks);
    add(families, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
        MetricType::Gauge, field(23));
    add(families, "process_resident_memory_bytes", "Resident memory size in bytes.",
        MetricType::Gauge, field(24) * page);
    if (auto boot = boot_time()) {
      add(families, "process_start_time_seconds",
          "Start time of the process since unix epoch in seconds.", MetricType::Gauge,
          *boot + field(22) / ticks);
    }
  }
  std::error_code ec;
  std::size_t fds = 0;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
       it.increment(ec))
    ++fds;
  // The directory iterator's own descriptor is not one of the process's.
  if (!ec && fds > 0) {
    add(families, "process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
        static_cast<double>(fds - 1));
  }
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    add(families, "process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
        static_cast<double>(limit.rlim_cur));
  }
}

MetricFamily build_info_metric() {
  const detail::BuildInfo& b = detail::build_info();
  MetricFamily f;
  f.name = "plumber_build_info";
  f.help = "Plumber's version, commit and the library versions it was built with (always 1)";
  f.type = MetricType::Gauge;
  ClientMetric m;
  m.label = {{"version", b.version},
             {"commit", b.commit},
             {"boost", b.boost},
             {"nlohmann_json", b.nlohmann_json},
             {"spdlog", b.spdlog}};
  m.gauge.value = 1;
  f.metric.push_back(std::move(m));
  return f;
}

}  // namespace plumber::server
