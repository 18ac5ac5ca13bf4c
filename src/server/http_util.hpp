#pragma once
/// Pure helpers for HTTP requests: the target's path and query, the bearer
/// token, the Origin's host. No Beast, no I/O (unit-tested without a socket).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace plumber::server {

/// Splits a request target into its path and its query string.
std::pair<std::string_view, std::string_view> split_target(std::string_view target);
/// Decodes `%XX` escapes and `+` (a space).
std::string url_decode(std::string_view text);
/// The value of query parameter `key`, decoded.
std::optional<std::string> query_param(std::string_view query, std::string_view key);
/// Compares without stopping at the first difference (the token is a secret).
bool same_secret(std::string_view a, std::string_view b);
/// The host part of an Origin header ("http://host:port" -> "host:port").
std::string_view origin_host(std::string_view origin);
/// The credentials of `Authorization: Bearer TOKEN`; the scheme is
/// case-insensitive (RFC 7235), and spaces may follow it.
std::optional<std::string_view> bearer_token(std::string_view value);
/// An integer query parameter in [low, high] (`fallback` when absent);
/// nullopt, and `bad` set to why, when malformed.
std::optional<std::int64_t> integer_param(std::string_view query, std::string_view key,
                                          std::int64_t fallback, std::int64_t low,
                                          std::int64_t high, std::string& bad);
/// Whether a /v1 process body of this Content-Type is a JSON value (absent,
/// `application/json`, `application/*+json`, or curl's `--data` default
/// `application/x-www-form-urlencoded`); any other type is binary data.
bool json_content_type(std::string_view content_type);
/// NAME of a `/v1/graphs/NAME/process` path; nullopt for any other path.
std::optional<std::string_view> process_graph_name(std::string_view path);
/// Whether an Expect header asks for `100 Continue` (case-insensitive).
bool expects_continue(std::string_view expect);

}  // namespace plumber::server
