#pragma once
// Histograms of a node's counters: step calls by time and by batch size, and
// messages by their wait in the node's input (the server's /metrics and
// `plumber run --stats`).
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "plumber/processor.hpp"

namespace plumber::detail {

/// Counts per bucket; written by one strand, read from any thread (relaxed
/// load+store: a plain increment, unlike fetch_add).
template <std::size_t Buckets>
class BucketCounts {
 public:
  void add(std::size_t bucket) noexcept {
    if (bucket < Buckets)
      counts_[bucket].store(counts_[bucket].load(std::memory_order_relaxed) + 1,
                            std::memory_order_relaxed);
  }
  std::array<std::uint64_t, Buckets> get() const noexcept {
    std::array<std::uint64_t, Buckets> out{};
    for (std::size_t i = 0; i < Buckets; ++i)
      out[i] = counts_[i].load(std::memory_order_relaxed);
    return out;
  }

 private:
  std::array<std::atomic<std::uint64_t>, Buckets> counts_{};
};

/// Durations in the buckets of kStepSecondsBuckets; above the last bound, in none.
class StepHistogram {
 public:
  void observe(std::uint64_t ns) noexcept {
    const double seconds = static_cast<double>(ns) / 1e9;
    std::size_t i = 0;
    while (i < kStepSecondsBuckets.size() && seconds > kStepSecondsBuckets[i])
      ++i;
    counts_.add(i);
  }
  StepBuckets get() const noexcept { return counts_.get(); }

 private:
  BucketCounts<kStepSecondsBuckets.size()> counts_;
};

/// Batch sizes in the buckets of kBatchSizeBuckets; above the last bound, in none.
class BatchHistogram {
 public:
  void observe(std::size_t messages) noexcept {
    std::size_t i = 0;
    while (i < kBatchSizeBuckets.size() && messages > kBatchSizeBuckets[i])
      ++i;
    counts_.add(i);
    messages_.store(messages_.load(std::memory_order_relaxed) + messages,
                    std::memory_order_relaxed);
  }
  /// The messages of every call observed.
  std::uint64_t messages() const noexcept { return messages_.load(std::memory_order_relaxed); }
  BatchBuckets get() const noexcept {
    const auto all = counts_.get();
    BatchBuckets out{};
    for (std::size_t i = 0; i < out.size(); ++i)
      out[i] = all[i];
    return out;
  }
  /// Every call observed, those above the last bound included.
  std::uint64_t observed() const noexcept {
    std::uint64_t n = 0;
    for (std::uint64_t count : counts_.get())
      n += count;
    return n;
  }

 private:
  BucketCounts<kBatchSizeBuckets.size() + 1> counts_;  // the last: above every bound
  std::atomic<std::uint64_t> messages_{0};
};

}  // namespace plumber::detail
