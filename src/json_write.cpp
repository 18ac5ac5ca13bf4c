#include "json_write.hpp"

#include <string>

namespace plumber::detail {

void write_json_line(std::FILE* stream, const json& value) {
  // One serializer a thread, bound to one string: json::dump() would build a
  // fresh string (and a fresh output adapter) each time.
  thread_local std::string text;
  thread_local nlohmann::detail::serializer<json> serializer(
      nlohmann::detail::output_adapter<char, std::string>(text), ' ',
      json::error_handler_t::replace);
  text.clear();
  serializer.dump(value, /*pretty_print=*/false, /*ensure_ascii=*/false, /*indent_step=*/0);
  text.push_back('\n');
  std::fwrite(text.data(), 1, text.size(), stream);
  if (text.capacity() > (std::size_t{1} << 20)) std::string().swap(text);  // after a huge value
}

}  // namespace plumber::detail
