#pragma once
/// The host side of an `exec` node: copies of an external program that read
/// requests on stdin and write results on stdout, one JSON object a line
/// (docs/graph-format.md, "exec"). Everything but launch(), wait_ready() and
/// stats() runs on the pipeline's strand.
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include "exec/program.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/worker_pool.hpp"
#include "runtime/packet.hpp"
#include "runtime/step_runner.hpp"
#include "workers/autoscaler.hpp"

namespace plumber::detail {

/// Life (as WorkerPool's): launch() starts `procs` copies, wait_ready() waits
/// for each one's `{"ready": true}`; run() spawns a supervisor per copy (it
/// reads its stdout, logs its stderr, restarts it when it dies) and, for an
/// auto-scaled node, the scaler; process() hands a batch to an idle copy (at
/// most depth_ requests in a copy's pipe, answered in order, so a copy that
/// dies takes exactly one batch with it) and awaits its results; close() closes the copies' stdin
/// once the node has drained, and they exit. stop(false) cancels the supervisors, which kill their
/// copies.
class ExecPool {
 public:
  using Spawn = std::function<void(asio::awaitable<void>)>;

  ExecPool(const NodeSpec& node, const Strand& strand, std::chrono::milliseconds start_timeout,
           std::function<std::uint64_t()> queued, std::size_t priorities = 1);
  ~ExecPool();
  ExecPool(const ExecPool&) = delete;
  ExecPool& operator=(const ExecPool&) = delete;

  void launch();
  /// Throws std::runtime_error naming the copy, with its error line or the end
  /// of its stderr, when one is not ready in time (and kills them all).
  void wait_ready();
  void run(const Spawn& spawn);
  asio::awaitable<void> process(std::vector<Message>& batch, std::vector<Message>& results,
                                StepOutcome& outcome,
                                std::optional<std::chrono::milliseconds> timeout);
  void close();
  /// Thread-safe.
  WorkerPoolStats stats() const;

 private:
  struct Pending;
  struct Copy;
  enum class State { stopped, starting, ready, broken };

  // Processes (exec_pool.cpp).
  void start(Copy& c);
  void wait_ready_blocking(Copy& c);
  void kill_and_reap(Copy& c) noexcept;
  std::string reap(Copy& c);
  asio::awaitable<void> supervise(Copy& c);
  asio::awaitable<void> read_stdout(Copy& c);
  asio::awaitable<void> read_stderr(Copy& c);
  asio::awaitable<void> wait_exit(Copy& c);
  asio::awaitable<void> watch_start(Copy& c);
  void after_death(Copy& c, const std::string& why, bool was_ready);
  void restart(Copy& c);
  asio::awaitable<void> autoscale();
  void grow();
  void shrink();
  PoolLoad load() const;
  std::string describe(const Copy& c) const;
  std::string with_stderr(const Copy& c, std::string text) const;

  // Requests and results (exec_requests.cpp).
  void read_now(Copy& c);  // what its stdout and stderr hold, without waiting
  void take_stdout(Copy& c, std::string_view bytes);
  void take_stderr(Copy& c, std::string_view bytes);
  void handle_line(Copy& c, std::string_view line);
  void protocol_error(Copy& c, std::string why);
  void dispatch();
  void send(Copy& c, Pending& p);
  void complete(Pending& p);
  void forget(Pending& p) noexcept;
  void fail_waiting(const std::string& why);

  NodeSpec node_;
  Strand strand_;
  ProgramSpec program_;
  std::chrono::milliseconds start_timeout_;
  std::function<std::uint64_t()> queued_;
  /// Every copy the pool may ever run (`max` of an auto-scaled pool): the
  /// vector never changes after construction, so stats() may read it.
  std::vector<std::unique_ptr<Copy>> copies_;
  std::deque<Pending*> waiting_;                         // in priority order
  std::unordered_map<std::uint64_t, Pending*> running_;  // by request id
  std::uint64_t next_request_ = 0;
  /// Requests in one copy's pipe at once: 2 keeps a copy busy while the host
  /// reads its last answer; 1 with timeout_ms or priority lanes (exact).
  std::size_t depth_ = 2;
  /// False once the pool is destroyed: write handlers that outlive it do nothing.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::optional<Autoscaler> scaler_;
  std::optional<asio::steady_timer> scale_timer_;
  Spawn spawn_;
  bool closing_ = false;
  bool cancelled_ = false;
  std::string last_error_;

  Counter tasks_done_, batches_done_, in_flight_, restarts_, deaths_, queue_ns_, worker_ns_, size_;
  std::atomic<std::uint64_t> max_batch_{0};
};

}  // namespace plumber::detail
