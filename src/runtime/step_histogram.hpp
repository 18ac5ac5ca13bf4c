#pragma once
// How long the calls of one step took, in the buckets of
// plumber::kStepSecondsBuckets (for the server's per-node histogram).
#include <array>
#include <atomic>
#include <cstdint>

#include "plumber/processor.hpp"

namespace plumber::detail {

/// Counts of calls per bucket; written by one strand, read from any thread.
class StepHistogram {
 public:
  void observe(std::uint64_t ns) noexcept {
    const double seconds = static_cast<double>(ns) / 1e9;
    std::size_t i = 0;
    while (i < kStepSecondsBuckets.size() && seconds > kStepSecondsBuckets[i])
      ++i;
    if (i < counts_.size()) {
      counts_[i].store(counts_[i].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
  }
  /// Calls per bucket (not cumulative); calls above the last bound are in none.
  StepBuckets get() const noexcept {
    StepBuckets out{};
    for (std::size_t i = 0; i < out.size(); ++i)
      out[i] = counts_[i].load(std::memory_order_relaxed);
    return out;
  }

 private:
  std::array<std::atomic<std::uint64_t>, kStepSecondsBuckets.size()> counts_{};
};

}  // namespace plumber::detail
