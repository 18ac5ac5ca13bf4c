// Internal: an asynchronous connection to the broker, hiredis driven by Asio
// (hiredis' adapter pattern: its read/write events become async_wait on the
// socket's stream_descriptor), for the host side of a remote node.
#pragma once
#include <memory>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>

#include "plumber/asio_fwd.hpp"
#include "remote/broker_url.hpp"
#include "remote/redis_reply.hpp"
#include "runtime/packet.hpp"

struct redisAsyncContext;

namespace plumber::detail {

/// One connection, used on one strand. Commands are pipelined: several may be
/// outstanding, their replies come back in order. When the connection breaks,
/// every outstanding command completes with an error and connected() is false
/// until connect() succeeds again.
class AsyncRedis {
 public:
  using Handler = asio::any_completion_handler<void(boost::system::error_code, RedisReply)>;

  AsyncRedis(const Strand& strand, BrokerAddress address);
  ~AsyncRedis();
  AsyncRedis(const AsyncRedis&) = delete;
  AsyncRedis& operator=(const AsyncRedis&) = delete;

  /// Connects, logs in, selects the database; throws RedisError.
  asio::awaitable<void> connect();
  bool connected() const noexcept;
  /// Sends a command; completes with its reply (an error reply is a value), or
  /// with an error code when the connection broke. `args` is copied into
  /// the connection's buffer when the command starts.
  asio::awaitable<RedisReply> command(const RedisArgs& args);
  /// Sends a command whose reply nobody waits for (in order with the others),
  /// writing it to the socket at once; dropped when not connected.
  void send(const RedisArgs& args);
  /// Frees the connection: outstanding commands complete with an error.
  void close();

 private:
  struct State;
  void start_command(const RedisArgs& args, Handler handler);
  /// redisAsyncCommandArgv with `args`; REDIS_OK or REDIS_ERR.
  int issue(const RedisArgs& args, void (*callback)(redisAsyncContext*, void*, void*), void* data);
  std::shared_ptr<State> state_;
};

}  // namespace plumber::detail
