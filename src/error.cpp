#include "plumber/error.hpp"

namespace plumber {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "plumber"; }
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::step_failed:
        return "step failed";
      case errc::timed_out:
        return "timed out";
      case errc::cancelled:
        return "cancelled";
      case errc::pipeline_stopped:
        return "pipeline stopped";
      case errc::input_closed:
        return "input already ended";
      case errc::not_started:
        return "the pipeline was not started";
    }
    return "unknown plumber error";
  }
};

std::string summarize(const std::string& file, const std::vector<Diagnostic>& diagnostics) {
  std::string text;
  for (const auto& d : diagnostics) {
    if (!text.empty()) text += '\n';
    text += d.format(file);
  }
  return text;
}

}  // namespace

const std::error_category& error_category() noexcept {
  static const Category category;
  return category;
}

std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

std::string Diagnostic::format(const std::string& file) const {
  std::string text;
  if (!file.empty()) text += file + ": ";
  text += (pointer.empty() ? std::string("/") : pointer) + ": " + message;
  if (!hint.empty()) text += " (" + hint + ")";
  return text;
}

GraphError::GraphError(std::string file, std::vector<Diagnostic> diagnostics)
    : std::runtime_error(summarize(file, diagnostics)),
      file_(std::move(file)),
      diagnostics_(std::move(diagnostics)) {}

}  // namespace plumber
