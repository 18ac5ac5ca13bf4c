// A plugin for the tests: registers "shout" (upper-cases a string and appends
// params.suffix), "crash" (kills its process on the value "crash": a worker
// death), "to_blob" (a string's bytes as a blob, the value its length) and the
// predicate "is_long" (a string of more than 5 bytes).
#include <cctype>
#include <csignal>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "plumber/plugin.hpp"

namespace {

/// A string's bytes as a blob; the value becomes its length.
class ToBlob final : public plumber::Transform {
 public:
  void process(std::span<plumber::Message> batch, std::vector<plumber::Message>& out) override {
    for (plumber::Message& m : batch) {
      const std::string text = m.value.get<std::string>();
      // Header-only Blob constructor: the plugin resolves nothing more from the host.
      auto bytes = std::make_shared<std::vector<std::byte>>(text.size());
      for (std::size_t i = 0; i < text.size(); ++i)
        (*bytes)[i] = static_cast<std::byte>(text[i]);
      const std::span<const std::byte> view(bytes->data(), bytes->size());
      m.blobs.emplace_back(std::move(bytes), view);
      m.value = text.size();
      out.push_back(std::move(m));
    }
  }
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
  plumber::CoroutineInfo to_blob;
  to_blob.name = "to_blob";
  to_blob.description = "a string's bytes as a blob; the value becomes its length";
  to_blob.make_transform = [](const plumber::json&) { return std::make_unique<ToBlob>(); };
  registry.add(std::move(to_blob));
  registry.add_predicate({"is_long", "a string longer than 5 bytes", [](const plumber::json& v) {
                            return v.is_string() && v.get_ref<const std::string&>().size() > 5;
                          }});
}
