#pragma once
// "Did you mean" for the command line: a mistyped command or flag is named
// with the nearest one that exists.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace CLI {
class App;
}

namespace plumber::cli {

/// The nearest of `candidates` to `word`, when it is close enough to be a typo.
std::optional<std::string> nearest(std::string_view word,
                                   const std::vector<std::string>& candidates);

/// Checks argv against `app`'s commands and flags before CLI11 parses it: the
/// first unknown command or `--flag`, as a usage error with a hint
/// (`unknown command "runn" (did you mean "run"?)`), or nullopt when there is none.
std::optional<std::string> find_typo(const CLI::App& app, int argc, const char* const* argv);

}  // namespace plumber::cli
