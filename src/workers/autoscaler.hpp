#pragma once
/// The policy of an auto-scaled pool (`"procs": {"min": M, "max": N}`), apart
/// from the processes it sizes: worker pools and `exec` pools both ask it,
/// at each tick, whether to grow or shrink.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include "plumber/graph_spec.hpp"
#include "plumber/message.hpp"
#include "plumber/worker_pool.hpp"

namespace plumber::detail {

/// What a pool looks like at one tick.
struct PoolLoad {
  std::size_t size = 0;       ///< workers running or starting (not retiring)
  std::size_t ready = 0;      ///< of which taking work
  std::size_t busy = 0;       ///< of which running a batch
  std::uint64_t waiting = 0;  ///< messages in the node's input plus batches waiting for a worker
};

/// Grow one at a time while the node is backlogged and every worker busy, at
/// most every `cooldown`, never beyond `max`; back to `min` after
/// `scale_down_after` with nothing running and nothing waiting.
class Autoscaler {
 public:
  enum class Action { none, grow, shrink };

  Autoscaler(std::size_t min, const ProcsScaling& scaling, Clock::time_point now);

  /// What to do now. A grow or shrink is recorded as an event when the pool
  /// reports it done (resized).
  Action decide(const PoolLoad& load, Clock::time_point now);
  /// The pool changed size from `from` to `to`.
  void resized(std::size_t from, std::size_t to, Clock::time_point now);

  std::size_t min() const noexcept { return min_; }
  std::size_t max() const noexcept { return scaling_.max; }
  /// How often the pool should ask.
  std::chrono::milliseconds tick() const noexcept;
  /// Fills the scaling fields of `stats`. Thread-safe.
  void fill(WorkerPoolStats& stats) const;

 private:
  std::size_t min_;
  ProcsScaling scaling_;
  Clock::time_point started_;
  Clock::time_point last_change_;
  Clock::time_point idle_since_;
  bool idle_ = false;
  bool pressed_ = false;      // backlogged with every worker busy at the last tick too
  mutable std::mutex mutex_;  // the events: fill() runs on any thread
  std::uint64_t ups_ = 0, downs_ = 0;
  std::deque<ScaleEvent> events_;
};

}  // namespace plumber::detail
