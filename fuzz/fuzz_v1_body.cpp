// libFuzzer target: the body of POST /v1/graphs/NAME/process, parsed as the
// server parses it (the one JSON entry point, with its depth limit), then
// written back as the response writes values.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "json_parse.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  try {
    const plumber::json value = plumber::detail::parse_json(body);
    (void)value.dump(-1, ' ', false, plumber::json::error_handler_t::replace);
  } catch (const plumber::detail::JsonParseError&) {
  }
  return 0;
}
