#include "json_write.hpp"

#include <charconv>
#include <cmath>
#include <string>

#include "json_parse.hpp"

namespace plumber::detail {
namespace {

/// Appends `text` as a JSON string, escaped as nlohmann escapes it (ensure_ascii
/// off); false at invalid UTF-8, which nlohmann's serializer replaces.
bool append_string(std::string& out, const std::string& text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  const char* p = text.data();
  const char* end = p + text.size();
  while (p != end) {
    // The run of bytes that need no attention is appended at once.
    const char* run = p;
    while (p != end) {
      const auto c = static_cast<unsigned char>(*p);
      if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) break;
      ++p;
    }
    out.append(run, static_cast<std::size_t>(p - run));
    if (p == end) break;
    const auto c = static_cast<unsigned char>(*p);
    if (c >= 0x80) {
      const std::size_t length = utf8_length(p, end);
      if (length == 0) return false;
      out.append(p, length);
      p += length;
      continue;
    }
    out.push_back('\\');
    switch (c) {
      case '"':
      case '\\':
        out.push_back(static_cast<char>(c));
        break;
      case '\b':
        out.push_back('b');
        break;
      case '\t':
        out.push_back('t');
        break;
      case '\n':
        out.push_back('n');
        break;
      case '\f':
        out.push_back('f');
        break;
      case '\r':
        out.push_back('r');
        break;
      default:  // another control character: \u00XX, lower-case hex
        out.append("u00");
        out.push_back(kHex[c >> 4]);
        out.push_back(kHex[c & 0xF]);
    }
    ++p;
  }
  out.push_back('"');
  return true;
}

template <class Integer>
void append_integer(std::string& out, Integer value) {
  char digits[24];
  const auto result = std::to_chars(digits, digits + sizeof digits, value);
  out.append(digits, static_cast<std::size_t>(result.ptr - digits));
}

/// Appends `value` as compact JSON, exactly as json::dump() writes it; false
/// (with `out` partly written) at what only nlohmann's serializer handles:
/// invalid UTF-8 (replaced there), binary values, discarded values.
bool append_value(std::string& out, const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      out.append("null");
      return true;
    case json::value_t::boolean:
      out.append(value.get_ref<const json::boolean_t&>() ? "true" : "false");
      return true;
    case json::value_t::number_integer:
      append_integer(out, value.get_ref<const json::number_integer_t&>());
      return true;
    case json::value_t::number_unsigned:
      append_integer(out, value.get_ref<const json::number_unsigned_t&>());
      return true;
    case json::value_t::number_float: {
      const double number = value.get_ref<const json::number_float_t&>();
      if (!std::isfinite(number)) {
        out.append("null");
        return true;
      }
      char digits[64];
      // nlohmann's own shortest round-trip form ("82.0", "1e+100"), as dump() writes it.
      char* end = nlohmann::detail::to_chars(digits, digits + sizeof digits, number);
      out.append(digits, static_cast<std::size_t>(end - digits));
      return true;
    }
    case json::value_t::string:
      return append_string(out, value.get_ref<const json::string_t&>());
    case json::value_t::array: {
      out.push_back('[');
      bool first = true;
      for (const json& item : value.get_ref<const json::array_t&>()) {
        if (!first) out.push_back(',');
        first = false;
        if (!append_value(out, item)) return false;
      }
      out.push_back(']');
      return true;
    }
    case json::value_t::object: {
      out.push_back('{');
      bool first = true;
      for (const auto& [key, item] : value.get_ref<const json::object_t&>()) {
        if (!first) out.push_back(',');
        first = false;
        if (!append_string(out, key)) return false;
        out.push_back(':');
        if (!append_value(out, item)) return false;
      }
      out.push_back('}');
      return true;
    }
    default:
      return false;
  }
}

}  // namespace

void append_json_line(std::string& out, const json& value) {
  const std::size_t start = out.size();
  if (!append_value(out, value)) {
    out.resize(start);
    out += value.dump(-1, ' ', false, json::error_handler_t::replace);
  }
  out.push_back('\n');
}

void write_json_line(std::FILE* stream, const json& value) {
  // One buffer a thread: dump() would build a fresh string each time.
  thread_local std::string text;
  text.clear();
  append_json_line(text, value);
  std::fwrite(text.data(), 1, text.size(), stream);
  if (text.capacity() > (std::size_t{1} << 20)) std::string().swap(text);  // after a huge value
}

}  // namespace plumber::detail
