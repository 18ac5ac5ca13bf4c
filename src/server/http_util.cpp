// Pure helpers for HTTP requests (see http_util.hpp).
#include "server/http_util.hpp"

#include <cctype>
#include <exception>

namespace plumber::server {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

/// Splits a request target into its path and its query string.
std::pair<std::string_view, std::string_view> split_target(std::string_view target) {
  const auto question = target.find('?');
  if (question == std::string_view::npos) return {target, {}};
  return {target.substr(0, question), target.substr(question + 1)};
}

std::string url_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out += ' ';
    } else if (text[i] == '%' && i + 2 < text.size() && hex_value(text[i + 1]) >= 0 &&
               hex_value(text[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(text[i + 1]) * 16 + hex_value(text[i + 2]));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

/// The value of query parameter `key`, decoded.
std::optional<std::string> query_param(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const auto eq = pair.find('=');
    if (pair.substr(0, eq) == key) {
      return eq == std::string_view::npos ? std::string() : url_decode(pair.substr(eq + 1));
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

/// Compares without stopping at the first difference (the token is a secret).
bool same_secret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
  return diff == 0 && !b.empty();
}

/// The host part of an Origin header ("http://host:port" -> "host:port").
std::string_view origin_host(std::string_view origin) {
  const auto scheme = origin.find("://");
  if (scheme != std::string_view::npos) origin.remove_prefix(scheme + 3);
  return origin.substr(0, origin.find('/'));
}

/// The credentials of `Authorization: Bearer TOKEN`; the scheme is
/// case-insensitive (RFC 7235), and spaces may follow it.
std::optional<std::string_view> bearer_token(std::string_view value) {
  constexpr std::string_view scheme = "bearer";
  if (value.size() <= scheme.size() ||
      (value[scheme.size()] != ' ' && value[scheme.size()] != '\t')) {
    return std::nullopt;
  }
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(value[i])) != scheme[i]) return std::nullopt;
  }
  value.remove_prefix(scheme.size());
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
    value.remove_prefix(1);
  return value;
}

/// An integer query parameter in [low, high]; nullopt (and `bad` set) when malformed.
std::optional<std::int64_t> integer_param(std::string_view query, std::string_view key,
                                          std::int64_t fallback, std::int64_t low,
                                          std::int64_t high, std::string& bad) {
  auto text = query_param(query, key);
  if (!text) return fallback;
  try {
    std::size_t used = 0;
    const long long value = std::stoll(*text, &used);
    if (used == text->size() && value >= low && value <= high) return value;
  } catch (const std::exception&) {
  }
  bad = std::string(key) + " must be an integer from " + std::to_string(low) + " to " +
        std::to_string(high) + ", not \"" + *text + "\"";
  return std::nullopt;
}

namespace {

bool equal_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  }
  return true;
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t'))
    text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t'))
    text.remove_suffix(1);
  return text;
}

}  // namespace

bool json_content_type(std::string_view content_type) {
  const std::string_view media = trim(content_type.substr(0, content_type.find(';')));
  if (media.empty() || equal_ignoring_case(media, "application/json") ||
      equal_ignoring_case(media, "application/x-www-form-urlencoded"))
    return true;
  constexpr std::string_view application = "application/";
  constexpr std::string_view json_suffix = "+json";
  return media.size() > application.size() + json_suffix.size() &&
         equal_ignoring_case(media.substr(0, application.size()), application) &&
         equal_ignoring_case(media.substr(media.size() - json_suffix.size()), json_suffix);
}

std::optional<std::string_view> process_graph_name(std::string_view path) {
  constexpr std::string_view prefix = "/v1/graphs/";
  constexpr std::string_view suffix = "/process";
  if (path.size() <= prefix.size() + suffix.size() || !path.starts_with(prefix) ||
      !path.ends_with(suffix))
    return std::nullopt;
  const std::string_view name =
      path.substr(prefix.size(), path.size() - prefix.size() - suffix.size());
  if (name.find('/') != std::string_view::npos) return std::nullopt;
  return name;
}

bool expects_continue(std::string_view expect) {
  return equal_ignoring_case(trim(expect), "100-continue");
}

}  // namespace plumber::server
