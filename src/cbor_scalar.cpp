#include "cbor_scalar.hpp"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace plumber::detail {
namespace {

enum MajorType : std::uint8_t { kUnsigned = 0, kNegative = 1, kText = 3, kSimple = 7 };
constexpr std::uint8_t kFalse = 0xf4, kTrue = 0xf5, kNull = 0xf6, kFloat16 = 0xf9, kFloat32 = 0xfa,
                       kFloat64 = 0xfb;

std::uint64_t read_big_endian(const std::uint8_t* p, std::size_t bytes) {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < bytes; ++i)
    value = value << 8 | p[i];
  return value;
}

/// IEEE 754 half precision (RFC 8949, appendix D): how nlohmann writes
/// infinities and NaN.
double half_to_double(std::uint16_t half) {
  const int exponent = (half >> 10) & 0x1f;
  const unsigned mantissa = half & 0x3ff;
  double magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(mantissa, -24);
  } else if (exponent != 31) {
    magnitude = std::ldexp(mantissa + 1024, exponent - 25);
  } else {
    magnitude = mantissa == 0 ? std::numeric_limits<double>::infinity()
                              : std::numeric_limits<double>::quiet_NaN();
  }
  return (half & 0x8000) ? -magnitude : magnitude;
}

void append_big_endian(std::vector<std::uint8_t>& out, std::uint64_t value, std::size_t bytes) {
  for (std::size_t i = bytes; i-- > 0;)
    out.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

/// The initial byte and argument of a data item, in its shortest form.
void append_head(std::vector<std::uint8_t>& out, std::uint8_t major, std::uint64_t argument) {
  const auto initial = static_cast<std::uint8_t>(major << 5);
  if (argument < 24) {
    out.push_back(static_cast<std::uint8_t>(initial | argument));
  } else if (argument <= 0xff) {
    out.push_back(initial | 24);
    append_big_endian(out, argument, 1);
  } else if (argument <= 0xffff) {
    out.push_back(initial | 25);
    append_big_endian(out, argument, 2);
  } else if (argument <= 0xffffffff) {
    out.push_back(initial | 26);
    append_big_endian(out, argument, 4);
  } else {
    out.push_back(initial | 27);
    append_big_endian(out, argument, 8);
  }
}

}  // namespace

bool read_cbor_scalar(const std::uint8_t* data, std::size_t n, json& out) {
  if (n == 0) return false;
  const std::uint8_t initial = data[0];
  const std::uint8_t major = initial >> 5;
  const std::uint8_t info = initial & 31;
  if (major == kSimple) {
    const std::size_t size = initial == kFloat16   ? 3
                             : initial == kFloat32 ? 5
                             : initial == kFloat64 ? 9
                                                   : 1;
    if (n != size) return false;
    switch (initial) {
      case kFalse:
        out = false;
        return true;
      case kTrue:
        out = true;
        return true;
      case kNull:
        out = nullptr;
        return true;
      case kFloat16:
        out = half_to_double(static_cast<std::uint16_t>(read_big_endian(data + 1, 2)));
        return true;
      case kFloat32:
        out = static_cast<double>(
            std::bit_cast<float>(static_cast<std::uint32_t>(read_big_endian(data + 1, 4))));
        return true;
      case kFloat64:
        out = std::bit_cast<double>(read_big_endian(data + 1, 8));
        return true;
      default:
        return false;  // undefined simple values
    }
  }
  if (major != kUnsigned && major != kNegative && major != kText) return false;
  if (info > 27) return false;  // reserved, or an indefinite length
  const std::size_t head = info < 24 ? 1 : 1 + (std::size_t{1} << (info - 24));
  if (n < head) return false;
  const std::uint64_t argument = info < 24 ? info : read_big_endian(data + 1, head - 1);
  if (major == kText) {
    if (argument != n - head) return false;
    out = std::string(reinterpret_cast<const char*>(data + head), n - head);
    return true;
  }
  if (n != head) return false;
  if (major == kUnsigned) {
    out = argument;
  } else {
    if (argument > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      return false;  // below INT64_MIN: nlohmann's rules apply
    out = std::int64_t{-1} - static_cast<std::int64_t>(argument);
  }
  return true;
}

bool append_cbor_scalar(const json& value, std::vector<std::uint8_t>& out) {
  switch (value.type()) {
    case json::value_t::null:
      out.push_back(kNull);
      return true;
    case json::value_t::boolean:
      out.push_back(value.get<bool>() ? kTrue : kFalse);
      return true;
    case json::value_t::number_unsigned:
      append_head(out, kUnsigned, value.get<std::uint64_t>());
      return true;
    case json::value_t::number_integer: {
      const auto integer = value.get<std::int64_t>();
      if (integer >= 0) {
        append_head(out, kUnsigned, static_cast<std::uint64_t>(integer));
      } else {
        append_head(out, kNegative, static_cast<std::uint64_t>(-1 - integer));
      }
      return true;
    }
    case json::value_t::number_float:
      out.push_back(kFloat64);
      append_big_endian(out, std::bit_cast<std::uint64_t>(value.get<double>()), 8);
      return true;
    case json::value_t::string: {
      const auto& text = value.get_ref<const std::string&>();
      append_head(out, kText, text.size());
      out.insert(out.end(), text.begin(), text.end());
      return true;
    }
    default:
      return false;
  }
}

}  // namespace plumber::detail
