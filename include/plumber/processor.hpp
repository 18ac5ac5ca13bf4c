#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "plumber/worker_pool.hpp"

namespace plumber {

/// Upper bounds, in seconds, of the buckets of ProcessorStats::busy_buckets.
inline constexpr std::array<double, 12> kStepSecondsBuckets{1e-6, 5e-6, 2.5e-5, 1e-4, 5e-4, 2.5e-3,
                                                            1e-2, 5e-2, 0.25,   1,    5,    30};
/// Calls of a step per bucket of kStepSecondsBuckets (not cumulative).
using StepBuckets = std::array<std::uint64_t, kStepSecondsBuckets.size()>;
/// Upper bounds, in messages, of the buckets of ProcessorStats::batch_sizes.
inline constexpr std::array<std::uint64_t, 11> kBatchSizeBuckets{1,  2,   4,   8,   16,  32,
                                                                 64, 128, 256, 512, 1024};
/// Step calls per bucket of kBatchSizeBuckets (not cumulative).
using BatchBuckets = std::array<std::uint64_t, kBatchSizeBuckets.size()>;

/// Counters of a remote node (`remote`: its step runs in `plumber worker`
/// processes fed through Redis Streams). Updated on the pipeline's strand.
struct RemoteStats {
  std::string broker;       ///< without its password
  std::uint64_t sent = 0;   ///< messages sent to the task streams (resends included)
  std::uint64_t acked = 0;  ///< messages whose results (or step error) came back
  /// Results of entries delivered more than once (taken over from a silent
  /// worker, or read again by a worker after its connection broke).
  std::uint64_t redelivered = 0;
  std::uint64_t duplicates = 0;      ///< results dropped: their request was already answered
  std::uint64_t claimed = 0;         ///< results of entries a worker took over with XAUTOCLAIM
  std::uint64_t dead_lettered = 0;   ///< batches that exceeded max_deliveries
  std::uint64_t in_flight = 0;       ///< messages sent and not answered yet
  std::uint64_t resent = 0;          ///< batches sent again after the broker connection came back
  std::vector<std::string> workers;  ///< consumers seen in results (`host:pid`)
  StepBuckets rtt_buckets{};  ///< round trips (send to result) per kStepSecondsBuckets bucket
  std::uint64_t rtt_ns = 0;   ///< total round-trip time
};

/// Counters of one node at run time (a Processor). Read them at any time with
/// Pipeline::stats(); they are updated by the pipeline's strand only.
struct ProcessorStats {
  std::string node;
  std::string coroutine;
  std::uint64_t received = 0;   ///< messages taken from the input (or emitted, for a source)
  std::uint64_t emitted = 0;    ///< messages sent on, or output by a sink
  std::uint64_t errors = 0;     ///< error records (step failures, timeouts)
  std::uint64_t skipped = 0;    ///< passed on unchanged because `when` rejected them
  std::uint64_t expired = 0;    ///< skipped because their deadline had passed
  std::uint64_t cancelled = 0;  ///< dropped because their caller cancelled the request
  std::uint64_t retried = 0;    ///< attempts repeated after a failure
  std::uint64_t batches = 0;    ///< calls of the step
  std::uint64_t busy_ns = 0;    ///< time inside the step (only with collect_timings)
  StepBuckets busy_buckets{};   ///< calls by time inside the step (only with collect_timings)
  /// Step calls by messages in the call (batches of 4, 4 and 2: two calls in
  /// the bucket "4", one in "2"); calls of more than 1024 are in none.
  BatchBuckets batch_sizes{};
  std::uint64_t batched = 0;   ///< messages in every step call (the sum of the batch sizes)
  std::uint64_t waited = 0;    ///< messages whose wait in the input was measured (collect_timings)
  std::uint64_t wait_ns = 0;   ///< their time from the predecessor's send to this node's receive
  StepBuckets wait_buckets{};  ///< those messages by their wait, in kStepSecondsBuckets
  std::uint64_t queue_depth = 0;  ///< messages waiting in the input channel
  /// Messages per second taken in (received) and sent on (emitted), over the
  /// last few seconds: since the previous Pipeline::stats() call at least 5 s
  /// back, else since start().
  double rate_in = 0;
  double rate_out = 0;
  std::optional<WorkerPoolStats> workers;  ///< for a node with `procs`
  std::optional<RemoteStats> remote;       ///< for a node with `remote`
  bool fused = false;  ///< runs inline in its predecessor's coroutine (no channel hop)
};

}  // namespace plumber
