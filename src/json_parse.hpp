#pragma once
/// The one place where JSON (and the CBOR of worker records) enters Plumber.
///
/// Every text that comes from outside (graph files, input lines, jsonl files,
/// WebSocket frames, HTTP bodies, worker records) is parsed here, with a depth
/// limit and linear-time object building; every nlohmann exception becomes a
/// `JsonParseError` with a precise message (line and column when known).
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "plumber/json.hpp"

namespace plumber::detail {

/// Values nested deeper than this are refused wherever JSON enters Plumber.
inline constexpr std::size_t kMaxJsonDepth = 256;

/// Why a text is not acceptable JSON, e.g.
/// `parse error at line 1, column 6: syntax error while parsing value - ...`,
/// `number out of range at line 1, column 6: 1e999`,
/// `nested deeper than 256 levels at line 1, column 257`.
class JsonParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Parses `text` as one JSON document; throws JsonParseError, never a nlohmann exception.
json parse_json(std::string_view text, std::size_t max_depth = kMaxJsonDepth);

/// Parses `n` bytes of CBOR (a worker record's value); throws JsonParseError.
json parse_cbor(const std::uint8_t* data, std::size_t n, std::size_t max_depth = kMaxJsonDepth);

/// The length of the well-formed UTF-8 sequence (RFC 3629: no overlong form,
/// no surrogate, nothing past U+10FFFF, as nlohmann checks it) of a non-ASCII
/// byte at `p`; 0 when it does not start one.
std::size_t utf8_length(const char* p, const char* end) noexcept;

/// A nlohmann exception's message without its `[json.exception.type_error.302] ` prefix.
std::string json_error_text(const std::exception& e);

}  // namespace plumber::detail
