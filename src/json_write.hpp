#pragma once
/// JSON lines out: how `print` and `plumber run` write a value.
#include <cstdio>
#include <string>

#include "plumber/json.hpp"

namespace plumber::detail {

/// Appends `value` to `out` as one line of compact JSON, exactly what
/// `value.dump(-1, ' ', false, json::error_handler_t::replace)` and a '\n'
/// make (invalid UTF-8 in strings replaced by U+FFFD), about three times
/// faster: a direct writer, with dump() only for what it does not handle.
void append_json_line(std::string& out, const json& value);

/// Writes `value` to `stream` as append_json_line makes it, through a buffer
/// this thread keeps: no allocation a line. Write errors are left to the
/// stream's error flag.
void write_json_line(std::FILE* stream, const json& value);

}  // namespace plumber::detail
