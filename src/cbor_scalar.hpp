#pragma once
/// CBOR (RFC 8949) for the values worker records carry one by one: numbers,
/// strings, booleans and null, read and written here; arrays, objects and
/// binaries go through nlohmann.
///
/// nlohmann's CBOR reader builds a dozen strings (its BJData type tables)
/// each time one is made: about a tenth of a microsecond, more than the rest
/// of a worker round trip of a number costs. The encoding is standard CBOR
/// either way, and each side reads what the other writes.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "plumber/json.hpp"

namespace plumber::detail {

/// Reads `n` bytes that hold exactly one CBOR scalar into `out`; false (and
/// `out` untouched) for anything else, which the caller hands to nlohmann.
bool read_cbor_scalar(const std::uint8_t* data, std::size_t n, json& out);

/// Appends `value` as CBOR when it is a scalar; false (nothing appended) for
/// arrays, objects, binaries and discarded values.
bool append_cbor_scalar(const json& value, std::vector<std::uint8_t>& out);

}  // namespace plumber::detail
