#pragma once
#include <cstddef>
#include <string>

namespace plumber::detail {

/// The SHA-256 of `size` bytes at `data`, in lowercase hex.
std::string sha256_hex(const void* data, std::size_t size);

}  // namespace plumber::detail
