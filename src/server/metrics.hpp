#pragma once
/// What `GET /metrics` reports, in the Prometheus text format (prometheus-cpp's
/// data model and TextSerializer; values are read at scrape time). Thread-safe.
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "plumber/pipeline.hpp"
#include "plumber/processor.hpp"

namespace prometheus {
class Histogram;
struct MetricFamily;
}  // namespace prometheus

namespace plumber::server {

class Metrics {
 public:
  Metrics();
  ~Metrics();

  // --- server counters (bumped from any thread) -------------------------------
  std::atomic<std::int64_t> connections{0};           ///< open TCP connections
  std::atomic<std::uint64_t> connections_total{0};    ///< accepted since start
  std::atomic<std::uint64_t> connections_refused{0};  ///< over --max-connections
  std::atomic<std::int64_t> websockets{0};            ///< open WebSocket sessions
  std::atomic<std::uint64_t> frames_received{0};
  std::atomic<std::uint64_t> frames_sent{0};
  std::atomic<std::int64_t> send_queue_bytes{0};  ///< queued for all WebSocket clients
  std::atomic<std::int64_t> runs{0};              ///< runs going on (WebSocket)
  // Binary /v1 bodies (src/server/upload.hpp).
  std::atomic<std::uint64_t> upload_bytes{0};  ///< body bytes received into shared memory
  /// Of them, bytes that came with the header and were copied from the
  /// connection's buffer (the rest went from the socket straight into the blob).
  std::atomic<std::uint64_t> upload_bytes_copied{0};
  std::atomic<std::int64_t> upload_bytes_held{0};  ///< bytes of uploaded blobs alive now
  std::atomic<std::uint64_t> uploads_complete{0};
  std::atomic<std::uint64_t> uploads_incomplete{0};  ///< the body ended before its Content-Length

  void count_http(unsigned status);
  void count_ws_error(const std::string& code);
  void count_ws_closed(const std::string& reason);

  // --- pipelines --------------------------------------------------------------
  /// A pipeline whose node counters count from now on, under `graph`'s label.
  /// Returns the key to pass to finished().
  std::uint64_t track(const std::string& graph, std::shared_ptr<Pipeline> pipeline);
  /// The pipeline ended with `status` ("completed", "cancelled"): its counts are
  /// added to its graph's totals.
  void finished(std::uint64_t key, const std::string& status);
  /// A request of POST /v1/graphs/NAME/process took `seconds` and got `status`.
  void observe_process(const std::string& graph, unsigned status, double seconds);

  // --- the catalog (--graphs) -------------------------------------------------
  /// Graph `graph` serves `version`; `valid` is false when its file failed its
  /// last reload (the old version then keeps serving).
  void catalog_state(const std::string& graph, bool valid, std::uint64_t version);
  void catalog_removed(const std::string& graph);
  /// A file looked at by a reload: "applied", "rejected" or "removed".
  void count_reload(const std::string& result);

  /// The whole exposition.
  std::string render();

 private:
  struct NodeTotals {
    std::uint64_t received = 0, sent = 0, errors = 0, skipped = 0, expired = 0, retried = 0;
    std::uint64_t cancelled = 0, calls = 0, batched = 0, busy_ns = 0, waited = 0, wait_ns = 0,
                  restarts = 0;
    std::uint64_t blob_bytes_copied = 0, blob_bytes_shared = 0;  ///< of a worker pool
    StepBuckets buckets{};                                       ///< calls by time inside the step
    StepBuckets wait_buckets{};                    ///< messages by their wait in the node's input
    BatchBuckets batch_sizes{};                    ///< calls by messages in the call
    std::uint64_t scale_ups = 0, scale_downs = 0;  ///< auto-scaled pools' changes of size
    bool pool = false;                             ///< the node runs in worker processes (`procs`)
    std::optional<RemoteStats> remote;             ///< summed counters of a `remote` node
    /// Adds a node's counters (not its remote ones: finished and live runs differ).
    void add(const ProcessorStats& s);
  };
  struct Tracked {
    std::string graph;
    std::shared_ptr<Pipeline> pipeline;
  };
  /// The families of remote nodes (`remote`): counters, workers seen, round trips.
  static void render_remote(const std::map<std::pair<std::string, std::string>, NodeTotals>& nodes,
                            std::vector<prometheus::MetricFamily>& families);
  /// The (graph, node) label pair; folded into one when there are too many.
  std::pair<std::string, std::string> series(const std::string& graph, const std::string& node);

  std::mutex mutex_;
  std::uint64_t next_key_ = 0;
  std::map<std::uint64_t, Tracked> live_;
  std::map<std::pair<std::string, std::string>, NodeTotals> totals_;
  std::map<std::string, std::uint64_t> runs_total_;  // by status
  std::map<unsigned, std::uint64_t> http_;           // by status code
  std::map<std::string, std::uint64_t> ws_errors_;   // by code
  std::map<std::string, std::uint64_t> ws_closed_;   // by reason
  std::map<std::pair<std::string, unsigned>, std::uint64_t> process_requests_;
  std::map<std::string, std::pair<bool, std::uint64_t>> catalog_;  // graph -> (valid, version)
  std::map<std::string, std::uint64_t> reloads_;                   // by result
  std::map<std::string, std::unique_ptr<prometheus::Histogram>> process_seconds_;
};

}  // namespace plumber::server
