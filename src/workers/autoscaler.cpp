#include "workers/autoscaler.hpp"

#include <algorithm>

namespace plumber::detail {

namespace {
constexpr std::size_t kEventsKept = 64;
}  // namespace

Autoscaler::Autoscaler(std::size_t min, const ProcsScaling& scaling, Clock::time_point now)
    : min_(min), scaling_(scaling), started_(now), last_change_(now), idle_since_(now) {}

std::chrono::milliseconds Autoscaler::tick() const noexcept {
  const auto shortest = std::min(scaling_.cooldown, scaling_.scale_down_after);
  return std::clamp<std::chrono::milliseconds>(shortest / 4, std::chrono::milliseconds(2),
                                               std::chrono::milliseconds(250));
}

Autoscaler::Action Autoscaler::decide(const PoolLoad& load, Clock::time_point now) {
  // Under pressure twice in a row, so that one burst between two ticks does
  // not start a process; a worker still starting is not busy, so the pool
  // waits for it before it grows again.
  const bool pressed = load.waiting > 0 && load.ready > 0 && load.busy >= load.size;
  const bool was_pressed = pressed_;
  pressed_ = pressed;
  const bool idle = load.busy == 0 && load.waiting == 0;
  if (!idle) {
    idle_ = false;
  } else if (!idle_) {
    idle_ = true;
    idle_since_ = now;
  }
  if (pressed && was_pressed && load.size < scaling_.max &&
      now - last_change_ >= scaling_.cooldown) {
    return Action::grow;
  }
  if (idle_ && load.size > min_ && now - idle_since_ >= scaling_.scale_down_after) {
    return Action::shrink;
  }
  return Action::none;
}

void Autoscaler::resized(std::size_t from, std::size_t to, Clock::time_point now) {
  if (from == to) return;
  std::lock_guard lock(mutex_);
  (to > from ? ups_ : downs_) += 1;
  last_change_ = now;
  pressed_ = false;
  const auto at = std::chrono::duration_cast<std::chrono::milliseconds>(now - started_).count();
  events_.push_back({static_cast<std::uint64_t>(at), from, to});
  if (events_.size() > kEventsKept) events_.pop_front();
}

void Autoscaler::fill(WorkerPoolStats& stats) const {
  std::lock_guard lock(mutex_);
  stats.procs_min = min_;
  stats.procs_max = scaling_.max;
  stats.scale_ups = ups_;
  stats.scale_downs = downs_;
  stats.scale_events.assign(events_.begin(), events_.end());
}

}  // namespace plumber::detail
