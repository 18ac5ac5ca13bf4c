// The `exec` coroutine (an external program as a step) and its step runner.
#include <utility>

#include "builtins/builtins_detail.hpp"
#include "exec/exec_pool.hpp"
#include "runtime/step_runner.hpp"

namespace plumber::detail {
namespace {

/// What the registry makes for an `exec` node: a placeholder, since the step
/// runs in the program's copies (ExecRunner), never in this process.
class ProgramStep final : public Transform {
 public:
  void process(std::span<Message>, std::vector<Message>&) override {
    throw std::logic_error("an exec step runs in copies of its program, not in the host");
  }
};

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

void register_builtin_exec(Registry& registry) {
  CoroutineInfo info;
  info.name = "exec";
  info.kind = CoroutineKind::transform;
  info.description =
      "runs an external program (any language) as the step: JSON lines on its stdin and stdout; "
      "procs copies (docs/graph-format.md, \"exec\")";
  info.params = {
      {"command", ParamType::array, true, nullptr,
       "the program and its arguments, e.g. [\"python3\", \"steps/score.py\"] (PATH is searched)"},
      {"env", ParamType::object, false, nullptr, "environment variables set over the host's"},
      {"cwd", ParamType::string, false, nullptr,
       "working directory; relative to the graph file's directory (default: that directory)"},
  };
  info.capabilities.runs_programs = true;
  info.make_transform = [](const json&) { return std::make_unique<ProgramStep>(); };
  registry.add(std::move(info));
}

}  // namespace plumber::detail
