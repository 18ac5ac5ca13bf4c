#pragma once
/// The clock a worker times each batch with: CLOCK_MONOTONIC nanoseconds (the
/// parent's clock too), read from the CPU's time-stamp counter once its rate
/// is known.
///
/// Why not clock_gettime alone: in a VM it costs ~32 ns through the vDSO, and a
/// worker read it twice a batch, on the round trip's path; `rdtsc` costs ~12.
/// The counter's rate is measured against the clock over at least a
/// millisecond (calibrate(), called while idle or once every many batches).
/// Until then, on other CPUs, and if the counter ever goes back, it reads the
/// clock.
#include <cstdint>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "workers/protocol.hpp"  // monotonic_ns

namespace plumber::detail {

class BusyClock {
 public:
  BusyClock() noexcept : origin_(read_both()), anchor_(origin_) {}

  std::uint64_t now() const noexcept {
#if defined(__x86_64__)
    if (ns_per_tick_ > 0) {
      const std::uint64_t ticks = __rdtsc();
      if (ticks >= anchor_.ticks) {
        return anchor_.ns + static_cast<std::uint64_t>(static_cast<double>(ticks - anchor_.ticks) *
                                                       ns_per_tick_);
      }
    }
#endif
    return monotonic_ns();
  }

  /// Reads the clock and the counter together: the rate once a millisecond has
  /// passed since the first such reading, and a fresh starting point for now().
  void calibrate() noexcept {
#if defined(__x86_64__)
    const Reading reading = read_both();
    if (reading.ticks <= origin_.ticks || reading.ns <= origin_.ns) {
      // The counter went back (another core's, unsynchronised): start again.
      origin_ = anchor_ = reading;
      ns_per_tick_ = 0;
      return;
    }
    if (reading.ns - origin_.ns < kMinSpanNs) return;
    ns_per_tick_ = static_cast<double>(reading.ns - origin_.ns) /
                   static_cast<double>(reading.ticks - origin_.ticks);
    anchor_ = reading;
#endif
  }

  /// Whether now() reads the counter (else the clock).
  bool calibrated() const noexcept {
    return ns_per_tick_ > 0;
  }

 private:
  struct Reading {
    std::uint64_t ns = 0;
    std::uint64_t ticks = 0;
  };
  static Reading read_both() noexcept {
    Reading r;
#if defined(__x86_64__)
    r.ticks = __rdtsc();
#endif
    r.ns = monotonic_ns();
    return r;
  }
  static constexpr std::uint64_t kMinSpanNs = 1'000'000;
  Reading origin_, anchor_;
  double ns_per_tick_ = 0;
};

}  // namespace plumber::detail
