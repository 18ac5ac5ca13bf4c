#include "json_parse.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cbor_scalar.hpp"

namespace plumber::detail {
namespace {

/// "line L, column C" of byte `offset` of `text` (both counted from 1).
std::string where(std::string_view text, std::size_t offset) {
  offset = std::min(offset, text.size());
  std::size_t line = 1;
  std::size_t line_start = 0;
  for (std::size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(offset - line_start + 1);
}

/// The offset of the bracket that opens level `max_depth + 1`, skipping strings.
std::size_t too_deep_at(std::string_view text, std::size_t max_depth) {
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return i;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return text.size();
}

/// The members of the objects being built, one vector per nesting level: kept
/// from one parse to the next on each thread, so that they cost no allocation.
using Members = std::vector<std::pair<std::string, json>>;
/// Members a level keeps room for after its object is built.
constexpr std::size_t kScratchKept = 256;

/// Builds the DOM like nlohmann's json_sax_dom_parser, but refuses values nested
/// deeper than a limit, finds duplicate keys with a hash index instead of
/// ordered_map's linear search (which makes an object of n keys cost n²), and
/// collects an object's members in a scratch vector first: ordered_map's
/// vector of `pair<const std::string, json>` cannot move its elements, so each
/// growth would deep-copy every member parsed so far.
class DomBuilder {
 public:
  using object_vector = std::vector<std::pair<const std::string, json>>;

  DomBuilder(json& root, std::size_t max_depth, std::vector<Members>& scratch)
      : root_(root), max_depth_(max_depth), scratch_(scratch) {}
  ~DomBuilder() {
    // After an error, the levels still open hold members: drop them.
    for (std::size_t depth = 0; depth < stack_.size() && depth < scratch_.size(); ++depth)
      scratch_[depth].clear();
  }
  DomBuilder(const DomBuilder&) = delete;
  DomBuilder& operator=(const DomBuilder&) = delete;

  bool null() { return value(json(nullptr)); }
  bool boolean(bool v) { return value(json(v)); }
  bool number_integer(json::number_integer_t v) { return value(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return value(json(v)); }
  bool number_float(json::number_float_t v, const std::string&) { return value(json(v)); }
  bool string(std::string& v) { return value(json(std::move(v))); }
  bool binary(json::binary_t& v) { return value(json(std::move(v))); }

  bool start_object(std::size_t) {
    if (!open(json::object())) return false;
    if (scratch_.size() < stack_.size()) scratch_.resize(stack_.size());
    return true;
  }
  bool start_array(std::size_t) { return open(json::array()); }
  bool end_object() {
    // The members move into the object at once, into a vector of the right size.
    Members& members = scratch_[stack_.size() - 1];
    auto& entries =
        static_cast<object_vector&>(stack_.back().container->get_ref<json::object_t&>());
    entries.reserve(members.size());
    for (auto& [key, value] : members)
      entries.emplace_back(std::move(key), std::move(value));
    members.clear();
    if (members.capacity() > kScratchKept) Members().swap(members);  // a huge object's
    return close();
  }
  bool end_array() { return close(); }

  bool key(std::string& k) {
    Level& level = stack_.back();
    Members& members = scratch_[stack_.size() - 1];
    std::size_t at = members.size();
    // Small objects: a scan is cheapest; large ones get a hash index.
    if (members.size() < 16 && level.index.empty()) {
      for (std::size_t i = 0; i < members.size(); ++i) {
        if (members[i].first == k) at = i;
      }
    } else {
      if (level.index.empty()) {
        for (std::size_t i = 0; i < members.size(); ++i)
          level.index.emplace(members[i].first, i);
      }
      auto [it, inserted] = level.index.emplace(k, members.size());
      at = it->second;
    }
    if (at == members.size()) members.emplace_back(std::move(k), json());
    level.slot = &members[at].second;
    return true;
  }

  bool parse_error(std::size_t position, const std::string& token,
                   const nlohmann::json::exception& e) {
    error_ = json_error_text(e);
    position_ = position >= token.size() ? position - token.size() : 0;  // where the token starts
    kind_ = e.id >= 400 && e.id < 500 ? Kind::out_of_range : Kind::syntax;
    return false;
  }

  enum class Kind { none, syntax, out_of_range, too_deep };
  Kind kind() const noexcept { return kind_; }
  const std::string& error() const noexcept { return error_; }
  std::size_t position() const noexcept { return position_; }

 private:
  struct Level {
    json* container;
    json* slot = nullptr;  // the object member that the next value fills
    std::unordered_map<std::string, std::size_t> index;
  };

  json* place(json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Level& level = stack_.back();
    if (level.container->is_array()) {
      auto& items = level.container->get_ref<json::array_t&>();
      items.push_back(std::move(v));
      return &items.back();
    }
    // A member's slot: stays put while the value is built, since its object
    // takes no other member meanwhile.
    *level.slot = std::move(v);
    return level.slot;
  }

  bool value(json&& v) {
    place(std::move(v));
    return true;
  }

  bool open(json&& empty) {
    if (stack_.size() >= max_depth_) {
      kind_ = Kind::too_deep;
      return false;
    }
    stack_.push_back({place(std::move(empty)), nullptr, {}});
    return true;
  }

  bool close() {
    stack_.pop_back();
    return true;
  }

  json& root_;
  std::size_t max_depth_;
  std::vector<Members>& scratch_;  // indexed by depth: the level's members, when an object
  std::vector<Level> stack_;
  Kind kind_ = Kind::none;
  std::string error_;
  std::size_t position_ = 0;
};

/// This thread's scratch for DomBuilder.
std::vector<Members>& thread_scratch() {
  thread_local std::vector<Members> scratch;
  return scratch;
}

/// The parser of the common case, several times faster than nlohmann's lexer
/// (which copies each byte twice, once for its error messages): it builds the
/// same value, and gives up (returns false) at anything unusual: any error, a
/// duplicate key, an object of many members, a number that does not fit 18
/// digits or from_chars, nesting deeper than the limit, a byte-order mark.
/// parse_json then runs nlohmann's parser, which builds the value or says
/// precisely what is wrong. Everything it accepts, nlohmann accepts too.
class FastParser {
 public:
  FastParser(std::string_view text, std::size_t max_depth, std::vector<Members>& scratch)
      : p_(text.data()),
        end_(text.data() + text.size()),
        max_depth_(max_depth),
        scratch_(scratch) {}
  ~FastParser() {
    // After giving up, the levels left open hold members: drop them.
    for (std::size_t depth = 0; depth < used_ && depth < scratch_.size(); ++depth)
      scratch_[depth].clear();
  }
  FastParser(const FastParser&) = delete;
  FastParser& operator=(const FastParser&) = delete;

  bool parse(json& out) {
    skip_space();
    if (!value(out, 0)) return false;
    skip_space();
    return p_ == end_;
  }

 private:
  /// Objects with more members go to nlohmann's parser and DomBuilder's hash
  /// index: the duplicate check here is a linear scan.
  static constexpr std::size_t kMaxMembers = 32;

  void skip_space() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t'))
      ++p_;
  }

  bool literal(std::string_view word) {
    if (static_cast<std::size_t>(end_ - p_) < word.size() ||
        std::string_view(p_, word.size()) != word)
      return false;
    p_ += word.size();
    return true;
  }

  bool value(json& out, std::size_t depth) {
    if (p_ == end_) return false;
    switch (*p_) {
      case '{':
        return object(out, depth + 1);
      case '[':
        return array(out, depth + 1);
      case '"': {
        std::string text;
        if (!string(text)) return false;
        out = json(std::move(text));
        return true;
      }
      case 't':
        out = true;
        return literal("true");
      case 'f':
        out = false;
        return literal("false");
      case 'n':
        out = nullptr;
        return literal("null");
      default:
        return number(out);
    }
  }

  bool object(json& out, std::size_t depth) {
    if (depth > max_depth_) return false;
    ++p_;  // '{'
    if (scratch_.size() < depth) scratch_.resize(depth);
    used_ = std::max(used_, depth);
    const std::size_t level = depth - 1;
    skip_space();
    if (p_ != end_ && *p_ == '}') {
      ++p_;
      out = json::object();
      return true;
    }
    for (;;) {
      std::string key;
      if (p_ == end_ || *p_ != '"' || !string(key)) return false;
      for (const auto& member : scratch_[level]) {
        if (member.first == key) return false;  // a duplicate: DomBuilder's rule
      }
      skip_space();
      if (p_ == end_ || *p_ != ':') return false;
      ++p_;
      skip_space();
      json member;
      if (!value(member, depth)) return false;
      Members& members = scratch_[level];  // after value(): a deeper level may have resized
      if (members.size() == kMaxMembers) return false;
      members.emplace_back(std::move(key), std::move(member));
      skip_space();
      if (p_ == end_) return false;
      if (*p_ == '}') break;
      if (*p_ != ',') return false;
      ++p_;
      skip_space();
    }
    ++p_;  // '}'
    Members& members = scratch_[level];
    out = json::object();
    auto& entries = static_cast<DomBuilder::object_vector&>(out.get_ref<json::object_t&>());
    entries.reserve(members.size());
    for (auto& [key, member] : members)
      entries.emplace_back(std::move(key), std::move(member));
    members.clear();
    return true;
  }

  bool array(json& out, std::size_t depth) {
    if (depth > max_depth_) return false;
    ++p_;  // '['
    out = json::array();
    auto& items = out.get_ref<json::array_t&>();
    skip_space();
    if (p_ != end_ && *p_ == ']') {
      ++p_;
      return true;
    }
    for (;;) {
      items.emplace_back();
      if (!value(items.back(), depth)) return false;
      skip_space();
      if (p_ == end_) return false;
      if (*p_ == ']') break;
      if (*p_ != ',') return false;
      ++p_;
      skip_space();
    }
    ++p_;  // ']'
    return true;
  }

  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  /// The 4 hex digits after "\u"; -1 when they are not.
  int code_unit() {
    if (end_ - p_ < 4) return -1;
    int unit = 0;
    for (int i = 0; i < 4; ++i) {
      const int digit = hex_digit(p_[i]);
      if (digit < 0) return -1;
      unit = unit * 16 + digit;
    }
    p_ += 4;
    return unit;
  }

  static void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  /// One escape after its '\\'.
  bool escape(std::string& out) {
    if (p_ == end_) return false;
    const char c = *p_++;
    switch (c) {
      case '"':
      case '\\':
      case '/':
        out.push_back(c);
        return true;
      case 'b':
        out.push_back('\b');
        return true;
      case 'f':
        out.push_back('\f');
        return true;
      case 'n':
        out.push_back('\n');
        return true;
      case 'r':
        out.push_back('\r');
        return true;
      case 't':
        out.push_back('\t');
        return true;
      case 'u': {
        const int unit = code_unit();
        if (unit < 0 || (unit >= 0xDC00 && unit <= 0xDFFF)) return false;
        if (unit < 0xD800 || unit > 0xDBFF) {
          append_utf8(out, static_cast<std::uint32_t>(unit));
          return true;
        }
        // A high surrogate: a low one must follow.
        if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') return false;
        p_ += 2;
        const int low = code_unit();
        if (low < 0xDC00 || low > 0xDFFF) return false;
        append_utf8(out, 0x10000 + ((static_cast<std::uint32_t>(unit) - 0xD800) << 10) +
                             (static_cast<std::uint32_t>(low) - 0xDC00));
        return true;
      }
      default:
        return false;
    }
  }

  /// A string, p_ at its opening quote.
  bool string(std::string& out) {
    ++p_;  // '"'
    for (;;) {
      // The run of bytes that need no attention is appended at once.
      const char* run = p_;
      while (p_ != end_) {
        const auto c = static_cast<unsigned char>(*p_);
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++p_;
      }
      out.append(run, static_cast<std::size_t>(p_ - run));
      if (p_ == end_) return false;
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c == '\\') {
        ++p_;
        if (!escape(out)) return false;
      } else if (c >= 0x80) {
        const std::size_t length = utf8_length(p_, end_);
        if (length == 0) return false;
        out.append(p_, length);
        p_ += length;
      } else {
        return false;  // a control character
      }
    }
  }

  static bool digit(char c) { return c >= '0' && c <= '9'; }

  /// A number, as nlohmann reads it: an integer without '.' or exponent is
  /// unsigned, or signed when negative; the rest is a double.
  bool number(json& out) {
    const char* start = p_;
    const bool negative = *p_ == '-';
    if (negative) ++p_;
    if (p_ == end_ || !digit(*p_)) return false;
    const char* digits = p_;
    if (*p_ == '0') {
      ++p_;
    } else {
      while (p_ != end_ && digit(*p_))
        ++p_;
    }
    const auto integer_digits = static_cast<std::size_t>(p_ - digits);
    bool is_float = false;
    if (p_ != end_ && *p_ == '.') {
      ++p_;
      if (p_ == end_ || !digit(*p_)) return false;
      while (p_ != end_ && digit(*p_))
        ++p_;
      is_float = true;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == end_ || !digit(*p_)) return false;
      while (p_ != end_ && digit(*p_))
        ++p_;
      is_float = true;
    }
    if (!is_float) {
      if (integer_digits > 18) return false;  // may not fit: nlohmann decides
      std::uint64_t magnitude = 0;
      for (const char* d = digits; d != p_; ++d)
        magnitude = magnitude * 10 + static_cast<std::uint64_t>(*d - '0');
      if (negative) {
        out = -static_cast<std::int64_t>(magnitude);
      } else {
        out = magnitude;
      }
      return true;
    }
    double number = 0;
    const auto [end, ec] = std::from_chars(start, p_, number);
    // Out of range (overflow, or underflow that strtod would round): nlohmann decides.
    if (ec != std::errc() || end != p_ || !std::isfinite(number)) return false;
    out = number;
    return true;
  }

  const char* p_;
  const char* end_;
  std::size_t max_depth_;
  std::vector<Members>& scratch_;
  std::size_t used_ = 0;  ///< scratch levels this parse touched
};

std::string too_deep_text(std::size_t max_depth) {
  return "nested deeper than " + std::to_string(max_depth) + " levels";
}

}  // namespace

std::size_t utf8_length(const char* p, const char* end) noexcept {
  const auto byte = [&](std::ptrdiff_t i) {
    return p + i < end ? static_cast<unsigned char>(p[i]) : 0u;
  };
  const auto in = [](unsigned b, unsigned lo, unsigned hi) { return b >= lo && b <= hi; };
  const unsigned lead = byte(0);
  if (in(lead, 0xC2, 0xDF)) return in(byte(1), 0x80, 0xBF) ? 2 : 0;
  if (in(lead, 0xE0, 0xEF)) {
    const unsigned lo = lead == 0xE0 ? 0xA0 : 0x80, hi = lead == 0xED ? 0x9F : 0xBF;
    return in(byte(1), lo, hi) && in(byte(2), 0x80, 0xBF) ? 3 : 0;
  }
  if (in(lead, 0xF0, 0xF4)) {
    const unsigned lo = lead == 0xF0 ? 0x90 : 0x80, hi = lead == 0xF4 ? 0x8F : 0xBF;
    return in(byte(1), lo, hi) && in(byte(2), 0x80, 0xBF) && in(byte(3), 0x80, 0xBF) ? 4 : 0;
  }
  return 0;
}

std::string json_error_text(const std::exception& e) {
  std::string text = e.what();
  if (auto end = text.find("] "); text.starts_with("[json.exception") && end != std::string::npos) {
    text.erase(0, end + 2);
  }
  return text;
}

json parse_json(std::string_view text, std::size_t max_depth) {
  json root;
  if (FastParser(text, max_depth, thread_scratch()).parse(root)) return root;
  DomBuilder builder(root, max_depth, thread_scratch());
  bool ok = false;
  try {
    ok = json::sax_parse(text.begin(), text.end(), &builder);
  } catch (const nlohmann::json::exception& e) {
    throw JsonParseError(json_error_text(e));
  }
  if (ok) return root;
  switch (builder.kind()) {
    case DomBuilder::Kind::too_deep:
      throw JsonParseError(too_deep_text(max_depth) + " at " +
                           where(text, too_deep_at(text, max_depth)));
    case DomBuilder::Kind::out_of_range: {
      // nlohmann says "number overflow parsing '1e999'"; say where.
      throw JsonParseError(builder.error() + " at " + where(text, builder.position()));
    }
    default:
      throw JsonParseError(builder.error().empty() ? std::string("malformed JSON")
                                                   : builder.error());
  }
}

json parse_cbor(const std::uint8_t* data, std::size_t n, std::size_t max_depth) {
  json root;
  if (read_cbor_scalar(data, n, root)) return root;
  DomBuilder builder(root, max_depth, thread_scratch());
  bool ok = false;
  try {
    ok = json::sax_parse(data, data + n, &builder, json::input_format_t::cbor);
  } catch (const nlohmann::json::exception& e) {
    throw JsonParseError(json_error_text(e));
  }
  if (ok) return root;
  if (builder.kind() == DomBuilder::Kind::too_deep) throw JsonParseError(too_deep_text(max_depth));
  throw JsonParseError(builder.error().empty() ? std::string("malformed CBOR") : builder.error());
}

}  // namespace plumber::detail
