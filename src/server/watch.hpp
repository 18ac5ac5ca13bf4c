#pragma once
/// The server-wide view behind the `watch` operation (docs/protocol.md): every
/// WebSocket run on the server, whichever connection started it. No Beast here.
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "plumber/json.hpp"
#include "plumber/pipeline.hpp"

namespace plumber::server {

/// The runs going on, on every connection. Thread-safe.
class RunBoard {
 public:
  /// A run started; returns the key to pass to remove().
  std::uint64_t add(std::uint64_t connection, std::uint64_t run, std::string graph,
                    const std::shared_ptr<Pipeline>& pipeline);
  void remove(std::uint64_t key);
  /// `[{"connection", "run", "graph", "elapsed_ms", "stats": [...]}]`, oldest first.
  json runs_json() const;

 private:
  struct Entry {
    std::uint64_t connection = 0;
    std::uint64_t run = 0;
    std::string graph;
    std::weak_ptr<Pipeline> pipeline;
    std::chrono::steady_clock::time_point started;
  };
  mutable std::mutex mutex_;
  std::uint64_t next_ = 0;
  std::map<std::uint64_t, Entry> runs_;
};

/// A `watch` frame: `{"type": "watch", "you": connection, "runs": [...], "services": [...]}`.
json watch_frame(std::uint64_t you, json runs, json services);

}  // namespace plumber::server
