#include "cli/suggest.hpp"

#include <algorithm>

#include <CLI/CLI.hpp>

#include "registry/edit_distance.hpp"

namespace plumber::cli {
namespace {

/// The long flags of `app` ("--name"), and whether each takes a value.
struct Flags {
  std::vector<std::string> names;
  std::vector<std::string> with_value;
};

void add_flags(const CLI::App& app, Flags& flags) {
  for (const CLI::Option* option : app.get_options()) {
    for (const auto& name : option->get_lnames()) {
      flags.names.push_back("--" + name);
      if (option->get_type_size_max() > 0) flags.with_value.push_back("--" + name);
    }
  }
}

bool contains(const std::vector<std::string>& list, std::string_view word) {
  return std::find(list.begin(), list.end(), word) != list.end();
}

std::string hint(std::string_view word, const std::vector<std::string>& candidates) {
  const auto near = nearest(word, candidates);
  return near ? " (did you mean \"" + *near + "\"?)" : "";
}

}  // namespace

std::optional<std::string> nearest(std::string_view word,
                                   const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  std::size_t best_distance = 0;
  for (const auto& candidate : candidates) {
    const std::size_t d = detail::edit_distance(word, candidate);
    if (!best || d < best_distance) {
      best = candidate;
      best_distance = d;
    }
  }
  // Only what is plausibly a typo (the rule of the registry's hints).
  if (best && best_distance <= std::max<std::size_t>(2, word.size() / 3)) return best;
  return std::nullopt;
}

std::optional<std::string> find_typo(const CLI::App& app, int argc, const char* const* argv) {
  Flags flags;
  add_flags(app, flags);
  std::vector<std::string> commands;
  for (const CLI::App* command : app.get_subcommands({}))
    commands.push_back(command->get_name());

  const CLI::App* command = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") break;  // what follows is positional
    if (arg.starts_with("--")) {
      const std::string_view name = arg.substr(0, arg.find('='));
      if (contains(flags.names, name)) {
        // Its value is the next argument unless given as --name=value.
        if (contains(flags.with_value, name) && name.size() == arg.size()) ++i;
        continue;
      }
      return "unknown option " + std::string(name) +
             (command ? " for `plumber " + command->get_name() + "`" : "") +
             hint(name, flags.names);
    }
    if (arg.starts_with("-")) continue;  // short flags: CLI11 judges them
    if (command) continue;               // a positional argument of the command
    if (!contains(commands, arg)) {
      if (arg.ends_with(".json") || arg.find('/') != std::string_view::npos) {
        return "a command comes first: plumber run " + std::string(arg);
      }
      std::string all;
      for (const auto& c : commands)
        all += (all.empty() ? "" : ", ") + c;
      return "unknown command \"" + std::string(arg) + "\"" + hint(arg, commands) +
             " (commands: " + all + ")";
    }
    command = app.get_subcommand(std::string(arg));
    add_flags(*command, flags);
  }
  return std::nullopt;
}

}  // namespace plumber::cli
