#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "plumber/json.hpp"

namespace plumber {

/// Immutable, reference-counted bytes attached to a message. Copying a Blob
/// shares the bytes; fan-out never copies them.
class Blob {
 public:
  Blob() = default;
  /// Takes ownership of `bytes`.
  explicit Blob(std::vector<std::byte> bytes);
  /// Views bytes kept alive by `owner` (shared memory, a mapped file, ...).
  Blob(std::shared_ptr<const void> owner, std::span<const std::byte> bytes)
      : owner_(std::move(owner)), bytes_(bytes) {}

  std::span<const std::byte> bytes() const noexcept { return bytes_; }
  const std::byte* data() const noexcept { return bytes_.data(); }
  std::size_t size() const noexcept { return bytes_.size(); }
  /// Part of these bytes, sharing their owner (no copy).
  Blob slice(std::size_t offset, std::size_t size) const {
    return Blob(owner_, bytes_.subspan(offset, size));
  }
  /// How many Blobs share these bytes (for tests that prove nothing was copied).
  long use_count() const noexcept { return owner_.use_count(); }

 private:
  std::shared_ptr<const void> owner_;
  std::span<const std::byte> bytes_;
};

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
