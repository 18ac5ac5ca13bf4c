#include "runtime/rate_window.hpp"

#include <utility>

namespace plumber::detail {

void RateWindow::begin(Clock::time_point now) {
  std::lock_guard lock(mutex_);
  samples_.clear();
  samples_.push_back(Sample{now, {}, {}});
}

void RateWindow::apply(std::vector<ProcessorStats>& stats, Clock::time_point now) {
  std::lock_guard lock(mutex_);
  if (samples_.empty()) return;  // not started
  // The baseline: the newest sample at least kWindow old, else the oldest.
  while (samples_.size() > 1 && now - samples_[1].at >= kWindow)
    samples_.pop_front();
  const Sample& base = samples_.front();
  const double seconds = std::chrono::duration<double>(now - base.at).count();
  if (seconds > 0) {
    for (std::size_t i = 0; i < stats.size(); ++i) {
      const std::uint64_t in_before = i < base.received.size() ? base.received[i] : 0;
      const std::uint64_t out_before = i < base.emitted.size() ? base.emitted[i] : 0;
      if (stats[i].received >= in_before)
        stats[i].rate_in = static_cast<double>(stats[i].received - in_before) / seconds;
      if (stats[i].emitted >= out_before)
        stats[i].rate_out = static_cast<double>(stats[i].emitted - out_before) / seconds;
    }
  }
  if (now - samples_.back().at < std::chrono::seconds(1)) return;
  Sample sample{now, {}, {}};
  for (const ProcessorStats& s : stats) {
    sample.received.push_back(s.received);
    sample.emitted.push_back(s.emitted);
  }
  samples_.push_back(std::move(sample));
}

}  // namespace plumber::detail
