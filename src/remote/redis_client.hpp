// Internal: a blocking connection to the broker (hiredis), for `plumber worker`
// and for the host's start (which runs on the caller's thread).
#pragma once
#include <chrono>
#include <memory>

#include "remote/broker_url.hpp"
#include "remote/redis_reply.hpp"

namespace plumber::detail {

/// One blocking connection. Commands may be pipelined: append() several, then
/// read() each reply in order.
class RedisClient {
 public:
  /// Connects (and logs in, selects the database). Throws RedisError.
  RedisClient(const BrokerAddress& address, std::chrono::milliseconds timeout);
  ~RedisClient();
  RedisClient(RedisClient&&) noexcept;
  RedisClient& operator=(RedisClient&&) noexcept;

  /// Sends a command and returns its reply (an error reply is a value). Throws RedisError.
  RedisReply command(const RedisArgs& args);
  void append(const RedisArgs& args);
  RedisReply read();
  /// Reads may wait at most this long (for XREADGROUP BLOCK, give more than its block time).
  void set_timeout(std::chrono::milliseconds timeout);

 private:
  struct Context;
  std::unique_ptr<Context> context_;
};

}  // namespace plumber::detail
