// A plugin for the tests: registers "shout" (upper-cases a string and appends
// params.suffix), "crash" (kills its process on the value "crash": a worker
// death), "gate_log" (logs what it runs, and holds "hold" while a file exists)
// and the predicate "is_long" (a string of more than 5 bytes).
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "plumber/plugin.hpp"

namespace {

/// Appends its process id to DIR/starts in on_start, and each value it runs
/// (a JSON line) to DIR/log; on the value "hold" it then waits while DIR/hold
/// exists. Lets a test see which values ran, where, and in what order.
class GateLog final : public plumber::Transform {
 public:
  explicit GateLog(std::string dir) : dir_(std::move(dir)) {}
  void on_start() override { append("starts", std::to_string(::getpid())); }
  void process(std::span<plumber::Message> batch, std::vector<plumber::Message>& out) override {
    for (plumber::Message& m : batch) {
      append("log", m.value.dump());
      if (m.value == "hold") {
        while (std::filesystem::exists(dir_ + "/hold"))
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      out.push_back(std::move(m));
    }
  }

 private:
  void append(const std::string& file, const std::string& line) const {
    std::ofstream(dir_ + "/" + file, std::ios::app) << line << '\n' << std::flush;
  }
  std::string dir_;
};

}  // namespace

PLUMBER_PLUGIN(registry) {
  plumber::CoroutineOptions options;
  options.description = "upper-cases a string and appends params.suffix";
  options.params = {{"suffix", plumber::ParamType::string, false, "!", "appended to the value"}};
  options.worker_capable = true;
  registry.add_function(
      "shout",
      [](const plumber::json& value, const plumber::json& params) {
        if (!value.is_string()) throw std::invalid_argument("shout takes a string");
        std::string text = value.get<std::string>();
        for (char& c : text)
          c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        return plumber::json(text + params.at("suffix").get<std::string>());
      },
      std::move(options));
  plumber::CoroutineOptions crash;
  crash.description = "passes a value on; kills its own process (SIGKILL) on \"crash\"";
  crash.worker_capable = true;
  registry.add_function(
      "crash",
      [](const plumber::json& value) {
        if (value == "crash") std::raise(SIGKILL);
        return value;
      },
      std::move(crash));
  plumber::CoroutineInfo gate;
  gate.name = "gate_log";
  gate.description =
      "logs each value to params.dir/log; holds \"hold\" while params.dir/hold exists";
  gate.worker_capable = true;
  gate.emits_input_type = true;
  gate.params = {{"dir", plumber::ParamType::string, true, nullptr, "where the log files go"}};
  gate.make_transform = [](const plumber::json& p) {
    return std::make_unique<GateLog>(p.at("dir").get<std::string>());
  };
  registry.add(std::move(gate));
  registry.add_predicate({"is_long", "a string longer than 5 bytes", [](const plumber::json& v) {
                            return v.is_string() && v.get_ref<const std::string&>().size() > 5;
                          }});
}
