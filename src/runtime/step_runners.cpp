// The in-process step runners on the strand: inline, awaitable. The thread
// pool runner is in thread_pool_runner.cpp, the worker process runner in
// workers/worker_runner.cpp.
#include <algorithm>
#include <chrono>
#include <exception>
#include <utility>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "runtime/step_runner.hpp"

namespace plumber::detail {

std::unique_ptr<StepRunner> make_worker_runner(const RunnerContext& context,
                                               std::unique_ptr<Transform> step);
std::unique_ptr<StepRunner> make_remote_runner(const RunnerContext& context);
std::unique_ptr<StepRunner> make_exec_runner(const RunnerContext& context);
std::unique_ptr<StepRunner> make_thread_pool_runner(const RunnerContext& context,
                                                    std::unique_ptr<Transform> step);

std::string timeout_text(std::chrono::milliseconds limit) {
  return "timed out after " + std::to_string(limit.count()) + " ms";
}

namespace {

using asio::use_awaitable;

/// A synchronous step on the strand.
class InlineRunner final : public InProcessRunner {
 public:
  using InProcessRunner::InProcessRunner;
  Transform* inline_step() noexcept override { return step_.get(); }
  asio::awaitable<StepOutcome> run(std::vector<Message>& batch, std::vector<Message>& results,
                                   const AttemptLimits&) override {
    StepOutcome outcome;
    try {
      step_->process(batch, results);
    } catch (const std::exception& e) {
      outcome = failed(e);
    }
    co_return outcome;
  }
};

/// An awaitable step on the strand: interrupted at its timeout, or when every
/// message of the batch is past its deadline (nobody waits for the result).
class AwaitableRunner final : public InProcessRunner {
 public:
  using InProcessRunner::InProcessRunner;
  asio::awaitable<StepOutcome> run(std::vector<Message>& batch, std::vector<Message>& results,
                                   const AttemptLimits& limits) override {
    using namespace asio::experimental::awaitable_operators;
    StepOutcome outcome;
    const auto started = Clock::now();
    const auto timeout_at = limits.timeout ? started + *limits.timeout : Clock::time_point::max();
    const auto give_up_at = std::min(limits.deadline, timeout_at);
    try {
      if (give_up_at == Clock::time_point::max()) {
        co_await step_->process_async(batch, results);
        co_return outcome;
      }
      asio::steady_timer timer(co_await asio::this_coro::executor, give_up_at);
      auto winner =
          co_await (step_->process_async(batch, results) || timer.async_wait(use_awaitable));
      if (winner.index() == 1) {
        outcome.code = errc::timed_out;
        if (timeout_at <= limits.deadline) {
          outcome.failure = timeout_text(*limits.timeout);
        } else {
          outcome.failure = "deadline passed while the step ran";
          outcome.expired = true;
        }
      }
    } catch (const boost::system::system_error& e) {
      if (e.code() == asio::error::operation_aborted) throw;
      outcome = failed(e);
    } catch (const std::exception& e) {
      outcome = failed(e);
    }
    co_return outcome;
  }
};

}  // namespace

std::unique_ptr<StepRunner> make_step_runner(const RunnerContext& context,
                                             std::unique_ptr<Transform> step) {
  if (context.node.remote) return make_remote_runner(context);
  if (context.runs_programs) return make_exec_runner(context);
  if (context.node.procs > 0) return make_worker_runner(context, std::move(step));
  if (step->is_async()) return std::make_unique<AwaitableRunner>(std::move(step));
  if (context.node.threads > 0) return make_thread_pool_runner(context, std::move(step));
  return std::make_unique<InlineRunner>(std::move(step));
}

}  // namespace plumber::detail
