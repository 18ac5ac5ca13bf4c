// Internal: a Redis reply, copied out of hiredis (whose headers stay in src/remote/*.cpp).
#pragma once
#include <stdexcept>
#include <string>
#include <vector>

namespace plumber::detail {

/// One reply of the broker, as a tree.
struct RedisReply {
  enum class Type { nil, status, error, integer, string, array };
  Type type = Type::nil;
  long long integer = 0;
  std::string str;  ///< string, status and error replies
  std::vector<RedisReply> elements;

  bool is_error() const noexcept { return type == Type::error; }
  bool is_nil() const noexcept { return type == Type::nil; }
  /// An error reply that says "later", not "no": a broker loading its data
  /// after a restart (LOADING), running a script (BUSY), or in a failover.
  bool is_transient_error() const noexcept {
    if (!is_error()) return false;
    for (const char* prefix : {"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN"}) {
      if (str.starts_with(prefix)) return true;
    }
    return false;
  }
};

/// The broker could not be reached, or the connection broke.
class RedisError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Copies a hiredis `redisReply*` (passed as void* to keep hiredis out of headers).
RedisReply copy_reply(const void* hiredis_reply);

/// The arguments of one command (binary safe).
using RedisArgs = std::vector<std::string>;

}  // namespace plumber::detail
