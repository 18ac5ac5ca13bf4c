#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include "plumber/message.hpp"
#include "plumber/processor.hpp"

namespace plumber::detail {

/// The nodes' rates in and out (ProcessorStats::rate_in, rate_out), from the
/// counters that Pipeline::stats() reads: no timer, nothing per message. Each
/// read keeps a sample of the counters (at most one a second); a rate is taken
/// over the newest sample at least kWindow old, else over the oldest kept (the
/// start). A reader every second sees the last five seconds; a single read at
/// the end sees the whole run. Thread-safe.
class RateWindow {
 public:
  static constexpr std::chrono::seconds kWindow{5};

  /// The run starts now, every counter at zero.
  void begin(Clock::time_point now);
  /// Sets the rates of `stats` (the nodes in the same order at every call).
  void apply(std::vector<ProcessorStats>& stats, Clock::time_point now);

 private:
  struct Sample {
    Clock::time_point at;
    std::vector<std::uint64_t> received, emitted;  // by node; empty: all zero
  };
  std::mutex mutex_;
  std::deque<Sample> samples_;  // oldest first
};

}  // namespace plumber::detail
