// libFuzzer target: one WebSocket text frame, parsed as the server parses
// every frame of the protocol (docs/protocol.md).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <variant>

#include "server/protocol.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = plumber::server::parse_request(text);
  if (auto* error = std::get_if<plumber::server::ProtocolError>(&parsed)) {
    (void)plumber::server::dump(plumber::server::error_frame(*error, 0, nullptr));
  }
  return 0;
}
