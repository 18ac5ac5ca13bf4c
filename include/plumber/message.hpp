#pragma once
#include <chrono>
#include <cstdint>
#include <vector>

#include "plumber/blob.hpp"
#include "plumber/json.hpp"

namespace plumber {

using Clock = std::chrono::steady_clock;

/// What flows on an edge.
struct Message {
  /// Correlation id, assigned by the source and kept by every derived message.
  std::uint64_t id = 0;
  json value;
  std::vector<Blob> blobs;
  /// 0 is the lowest lane.
  std::uint8_t priority = 0;
  /// A step skips a message whose deadline has passed.
  Clock::time_point deadline = Clock::time_point::max();
  /// A trace context (0: not traced), carried like the deadline.
  std::uint64_t trace = 0;
};

/// What travels with a message besides its value and blobs: its envelope. Every
/// output of a step keeps the envelope of the input it derives from (same id),
/// whatever ran the step: inline, a thread pool, an awaitable, a worker process.
inline void inherit_envelope(Message& output, const Message& input) noexcept {
  if (output.priority == 0) output.priority = input.priority;
  if (input.deadline < output.deadline) output.deadline = input.deadline;
  if (!output.trace) output.trace = input.trace;
}

}  // namespace plumber
