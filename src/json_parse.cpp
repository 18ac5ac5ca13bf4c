#include "json_parse.hpp"

#include <unordered_map>
#include <utility>
#include <vector>

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

/// Builds the DOM like nlohmann's json_sax_dom_parser, but refuses values nested
/// deeper than a limit, and finds duplicate keys with a hash index instead of
/// ordered_map's linear search (which makes an object of n keys cost n²).
class DomBuilder {
 public:
  using object_vector = std::vector<std::pair<const std::string, json>>;

  DomBuilder(json& root, std::size_t max_depth) : root_(root), max_depth_(max_depth) {}

  bool null() { return value(json(nullptr)); }
  bool boolean(bool v) { return value(json(v)); }
  bool number_integer(json::number_integer_t v) { return value(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return value(json(v)); }
  bool number_float(json::number_float_t v, const std::string&) { return value(json(v)); }
  bool string(std::string& v) { return value(json(std::move(v))); }
  bool binary(json::binary_t& v) { return value(json(std::move(v))); }

  bool start_object(std::size_t) { return open(json::object()); }
  bool start_array(std::size_t) { return open(json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool key(std::string& k) {
    Level& level = stack_.back();
    auto& entries = static_cast<object_vector&>(level.container->get_ref<json::object_t&>());
    std::size_t at = entries.size();
    // Small objects: a scan is cheapest; large ones get a hash index.
    if (entries.size() < 16 && level.index.empty()) {
      for (std::size_t i = 0; i < entries.size(); ++i) {
        if (entries[i].first == k) at = i;
      }
    } else {
      if (level.index.empty()) {
        for (std::size_t i = 0; i < entries.size(); ++i)
          level.index.emplace(entries[i].first, i);
      }
      auto [it, inserted] = level.index.emplace(k, entries.size());
      at = it->second;
    }
    if (at == entries.size()) entries.emplace_back(std::move(k), json());
    level.slot = &entries[at].second;
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
  std::vector<Level> stack_;
  Kind kind_ = Kind::none;
  std::string error_;
  std::size_t position_ = 0;
};

std::string too_deep_text(std::size_t max_depth) {
  return "nested deeper than " + std::to_string(max_depth) + " levels";
}

}  // namespace

std::string json_error_text(const std::exception& e) {
  std::string text = e.what();
  if (auto end = text.find("] "); text.starts_with("[json.exception") && end != std::string::npos) {
    text.erase(0, end + 2);
  }
  return text;
}

json parse_json(std::string_view text, std::size_t max_depth) {
  json root;
  DomBuilder builder(root, max_depth);
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
  DomBuilder builder(root, max_depth);
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
