// The step runner of a `procs` node: its step runs in worker processes.
#include <utility>

#include "runtime/step_runner.hpp"
#include "workers/worker_pool.hpp"

namespace plumber::detail {
namespace {

class WorkerRunner final : public StepRunner {
 public:
  explicit WorkerRunner(const RunnerContext& context)
      : pool_(context.node, context.strand, context.worker_start_timeout, context.priorities,
              context.queued) {}

  asio::awaitable<StepOutcome> run(std::vector<Message>& batch, std::vector<Message>& results,
                                   const AttemptLimits& limits) override {
    StepOutcome outcome;
    co_await pool_.process(batch, results, outcome, limits.timeout);
    if (!outcome.ok() && outcome.code == errc{}) outcome.code = errc::step_failed;
    co_return outcome;
  }
  bool answers_at_once() const override { return pool_.answers_at_once(); }
  std::unique_ptr<StartedBatch> start_now(
      std::vector<Message>& batch, std::optional<std::chrono::milliseconds> timeout) override {
    return pool_.start_now(batch, timeout);
  }
  void recycle(std::unique_ptr<StartedBatch> started) override {
    pool_.recycle(std::move(started));
  }
  void launch() override { pool_.launch(); }
  // on_start runs in each worker, never here.
  void on_start() override { pool_.wait_ready(); }
  void serve(const std::function<void(asio::awaitable<void>)>& spawn) override { pool_.run(spawn); }
  void close() override { pool_.close(); }
  std::optional<WorkerPoolStats> worker_stats() const override { return pool_.stats(); }

 private:
  WorkerPool pool_;
};

}  // namespace

std::unique_ptr<StepRunner> make_worker_runner(const RunnerContext& context,
                                               std::unique_ptr<Transform>) {
  return std::make_unique<WorkerRunner>(context);
}

}  // namespace plumber::detail
