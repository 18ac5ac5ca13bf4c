// A plugin for the tests: registers "shout" (upper-cases a string and appends
// params.suffix), "crash" (kills its process on the value "crash": a worker
// death) and the predicate "is_long" (a string of more than 5 bytes).
#include <cctype>
#include <csignal>
#include <stdexcept>
#include <string>

#include "plumber/plugin.hpp"

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
  registry.add_predicate({"is_long", "a string longer than 5 bytes", [](const plumber::json& v) {
                            return v.is_string() && v.get_ref<const std::string&>().size() > 5;
                          }});
}
