// The server-wide view: every run, for the `watch` operation.
#include "server/watch.hpp"

#include "server/protocol.hpp"

namespace plumber::server {

std::uint64_t RunBoard::add(std::uint64_t connection, std::uint64_t run, std::string graph,
                            const std::shared_ptr<Pipeline>& pipeline) {
  std::lock_guard lock(mutex_);
  const std::uint64_t key = ++next_;
  runs_.emplace(
      key, Entry{connection, run, std::move(graph), pipeline, std::chrono::steady_clock::now()});
  return key;
}

void RunBoard::remove(std::uint64_t key) {
  std::lock_guard lock(mutex_);
  runs_.erase(key);
}

json RunBoard::runs_json() const {
  // Counters are read outside the lock: a pipeline's stats() takes its own.
  std::vector<Entry> entries;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [key, entry] : runs_)
      entries.push_back(entry);
  }
  const auto now = std::chrono::steady_clock::now();
  json all = json::array();
  for (const Entry& entry : entries) {
    auto pipeline = entry.pipeline.lock();
    if (!pipeline) continue;
    json one = json::object();
    one["connection"] = entry.connection;
    one["run"] = entry.run;
    one["graph"] = entry.graph;
    one["elapsed_ms"] =
        std::chrono::duration_cast<std::chrono::milliseconds>(now - entry.started).count();
    one["stats"] = stats_json(pipeline->stats());
    all.push_back(std::move(one));
  }
  return all;
}

json watch_frame(std::uint64_t you, json runs, json services) {
  json frame = json::object();
  frame["type"] = "watch";
  frame["you"] = you;
  frame["runs"] = std::move(runs);
  frame["services"] = std::move(services);
  return frame;
}

}  // namespace plumber::server
