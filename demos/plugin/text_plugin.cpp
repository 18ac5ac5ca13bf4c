// A plugin that adds text coroutines to any Plumber program:
//
//   plumber run demos/plugin/words.json --input demos/plugin/sentences.jsonl
//       --plugin build/release/demos/plugin/plumber_demo_plugin.so
//
// `word_stats` (string -> object) counts the words and letters of a line;
// `slug` (string -> string) turns a line into a URL slug; the predicate
// `is_question` selects lines ending with '?'.
#include <cctype>
#include <cstdint>
#include <string>

#include "plumber/plugin.hpp"

namespace {

using plumber::json;

json word_stats(const json& value) {
  const auto& text = value.get_ref<const std::string&>();
  std::int64_t words = 0, letters = 0;
  bool in_word = false;
  for (unsigned char c : text) {
    const bool letter = std::isalnum(c) != 0;
    letters += letter;
    if (letter && !in_word) ++words;
    in_word = letter;
  }
  json stats = json::object();
  stats["text"] = text;
  stats["words"] = words;
  stats["letters"] = letters;
  return stats;
}

json slug(const json& value, const json& params) {
  const auto separator = params.at("separator").get<std::string>();
  std::string out;
  for (unsigned char c : value.get_ref<const std::string&>()) {
    if (std::isalnum(c)) {
      out += static_cast<char>(std::tolower(c));
    } else if (!out.empty() && !out.ends_with(separator)) {
      out += separator;
    }
  }
  while (!separator.empty() && out.ends_with(separator))
    out.resize(out.size() - separator.size());
  return out;
}

}  // namespace

PLUMBER_PLUGIN(registry) {
  using plumber::ValueTypes;
  plumber::CoroutineOptions stats;
  stats.description = "counts the words and letters of a string";
  stats.worker_capable = true;
  stats.accepts = {ValueTypes::string};
  stats.emits = {ValueTypes::object};
  registry.add_function("word_stats", word_stats, std::move(stats));

  plumber::CoroutineOptions slugs;
  slugs.description = "turns a string into a lower-case URL slug";
  slugs.params = {{"separator", plumber::ParamType::string, false, "-", "between words"}};
  slugs.worker_capable = true;
  slugs.accepts = {ValueTypes::string};
  slugs.emits = {ValueTypes::string};
  registry.add_function("slug", slug, std::move(slugs));

  registry.add_predicate({"is_question", "a string ending with '?'", [](const json& v) {
                            return v.is_string() && v.get_ref<const std::string&>().ends_with('?');
                          }});
}
