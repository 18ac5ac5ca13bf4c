#include "remote/broker_url.hpp"

#include <charconv>
#include <stdexcept>

namespace plumber::detail {
namespace {

int number(std::string_view text, int low, int high, const char* what) {
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value < low || value > high) {
    throw std::invalid_argument(std::string(what) + " must be an integer between " +
                                std::to_string(low) + " and " + std::to_string(high) + ", not \"" +
                                std::string(text) + "\"");
  }
  return value;
}

}  // namespace

std::string BrokerAddress::display() const {
  // Appended piece by piece: GCC 12 at -O3 warns (-Wrestrict) on `"lit" + str`.
  std::string text = "redis://";
  text += host;
  text += ':';
  text += std::to_string(port);
  if (db != 0) {
    text += '/';
    text += std::to_string(db);
  }
  return text;
}

BrokerAddress parse_broker_url(std::string_view url) {
  constexpr std::string_view scheme = "redis://";
  if (!url.starts_with(scheme)) {
    throw std::invalid_argument(
        "a broker URL starts with redis:// (redis://[:password@]host:port[/db])");
  }
  BrokerAddress address;
  address.url = std::string(url);
  std::string_view rest = url.substr(scheme.size());
  if (auto at = rest.rfind('@'); at != std::string_view::npos) {
    std::string_view user_info = rest.substr(0, at);
    if (user_info.starts_with(':')) user_info.remove_prefix(1);
    address.password = std::string(user_info);
    rest = rest.substr(at + 1);
  }
  if (auto slash = rest.find('/'); slash != std::string_view::npos) {
    if (slash + 1 < rest.size())
      address.db = number(rest.substr(slash + 1), 0, 1'000'000, "the database");
    rest = rest.substr(0, slash);
  }
  if (auto colon = rest.rfind(':'); colon != std::string_view::npos) {
    address.port = number(rest.substr(colon + 1), 1, 65535, "the port");
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) throw std::invalid_argument("the broker URL has no host");
  address.host = std::string(rest);
  return address;
}

}  // namespace plumber::detail
