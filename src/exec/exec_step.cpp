// The step runner of `exec` nodes (an external program as a step); the
// coroutine itself is registered in src/builtins/exec_coroutine.cpp.
#include <utility>

#include "exec/exec_pool.hpp"
#include "runtime/step_runner.hpp"

namespace plumber::detail {
namespace {

class ExecRunner final : public StepRunner {
 public:
  explicit ExecRunner(const RunnerContext& context)
      : pool_(context.node, context.strand, context.worker_start_timeout, context.queued,
              context.priorities) {}

  asio::awaitable<StepOutcome> run(std::vector<Message>& batch, std::vector<Message>& results,
                                   const AttemptLimits& limits) override {
    StepOutcome outcome;
    co_await pool_.process(batch, results, outcome, limits.timeout);
    co_return outcome;
  }
  void launch() override { pool_.launch(); }
  void on_start() override { pool_.wait_ready(); }
  void serve(const std::function<void(asio::awaitable<void>)>& spawn) override { pool_.run(spawn); }
  void close() override { pool_.close(); }
  std::optional<WorkerPoolStats> worker_stats() const override { return pool_.stats(); }

 private:
  ExecPool pool_;
};

}  // namespace

std::unique_ptr<StepRunner> make_exec_runner(const RunnerContext& context) {
  return std::make_unique<ExecRunner>(context);
}

}  // namespace plumber::detail
