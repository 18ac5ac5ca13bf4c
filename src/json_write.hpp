#pragma once
/// JSON lines out: how `print` and `plumber run` write a value.
#include <cstdio>

#include "plumber/json.hpp"

namespace plumber::detail {

/// Writes `value` to `stream` as one line of compact JSON (invalid UTF-8 in
/// strings replaced by U+FFFD), through a buffer this thread keeps: no
/// allocation a line. Write errors are left to the stream's error flag.
void write_json_line(std::FILE* stream, const json& value);

}  // namespace plumber::detail
