// Internal: a broker address, `redis://[:password@]host:port[/db]`.
#pragma once
#include <string>
#include <string_view>

namespace plumber::detail {

/// Where a Redis broker listens, and how to log in.
struct BrokerAddress {
  std::string host;
  int port = 6379;
  std::string password;  ///< empty: no AUTH
  int db = 0;
  std::string url;  ///< as written, for messages (password included: do not log it elsewhere)
  /// The URL without its password, for messages and logs.
  std::string display() const;
};

/// Parses `redis://[:password@]host[:port][/db]`. Throws std::invalid_argument
/// with a message that says what is wrong.
BrokerAddress parse_broker_url(std::string_view url);

}  // namespace plumber::detail
