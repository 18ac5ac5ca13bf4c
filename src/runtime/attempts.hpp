#pragma once
#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

#include "plumber/graph_spec.hpp"
#include "plumber/message.hpp"
#include "runtime/step_runner.hpp"

namespace plumber::detail {

/// The one retry/timeout/deadline policy of a node, whatever runs its step:
///
///     Attempts attempts(spec, batch);
///     do outcome = <run one attempt within attempts.limits()>;
///     while (attempts.retry(outcome, batch));
///
/// A step may move from its inputs: with retries, the batch is copied first
/// and restored before each new attempt.
class Attempts {
 public:
  Attempts(const NodeSpec& spec, std::span<const Message> batch) : retries_(spec.retries) {
    limits_.timeout = spec.timeout;
    if (!batch.empty()) {
      Clock::time_point latest = Clock::time_point::min();
      for (const Message& m : batch)
        latest = std::max(latest, m.deadline);
      limits_.deadline = latest;
    }
    if (retries_ > 0) backup_.assign(batch.begin(), batch.end());
  }

  const AttemptLimits& limits() const noexcept { return limits_; }

  /// After an attempt: true when another one follows (the batch was restored,
  /// `results` cleared). A batch past its deadline is not retried.
  bool retry(const StepOutcome& outcome, std::span<Message> batch, std::vector<Message>& results) {
    if (outcome.ok() || outcome.expired || outcome.final || attempt_ >= retries_) return false;
    ++attempt_;
    std::copy(backup_.begin(), backup_.end(), batch.begin());
    results.clear();
    return true;
  }

 private:
  std::size_t retries_;
  std::size_t attempt_ = 0;
  AttemptLimits limits_;
  std::vector<Message> backup_;
};

}  // namespace plumber::detail
