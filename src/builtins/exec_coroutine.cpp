// The `exec` coroutine as the registry lists it. Its step runs in copies of
// the program (src/exec/, chosen by Capabilities::runs_programs), never here:
// the registration stays free of the runner, for the fuzz targets' core.
#include <memory>
#include <stdexcept>

#include "builtins/builtins_detail.hpp"

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

}  // namespace

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
