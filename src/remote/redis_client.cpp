#include "remote/redis_client.hpp"

#include <sys/time.h>

#include <hiredis/hiredis.h>

#include <string>
#include <vector>

#include "exec/program.hpp"

namespace plumber::detail {

RedisReply copy_reply(const void* hiredis_reply) {
  const auto* r = static_cast<const redisReply*>(hiredis_reply);
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::string;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::status;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::error;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::integer;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::array;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i)
        out.elements.push_back(copy_reply(r->element[i]));
      break;
    default:
      out.type = RedisReply::Type::nil;
  }
  return out;
}

namespace {

timeval to_timeval(std::chrono::milliseconds t) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
  return tv;
}

}  // namespace

struct RedisClient::Context {
  redisContext* c = nullptr;
  ~Context() {
    if (c) redisFree(c);
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw RedisError(what + ": " + (c && c->errstr[0] ? c->errstr : "connection lost"));
  }
};

RedisClient::RedisClient(const BrokerAddress& address, std::chrono::milliseconds timeout)
    : context_(std::make_unique<Context>()) {
  ignore_sigpipe_once();  // a write to a broker that died is EPIPE, not the end of this process
  context_->c = redisConnectWithTimeout(address.host.c_str(), address.port, to_timeval(timeout));
  if (!context_->c) throw RedisError("cannot allocate a hiredis context");
  if (context_->c->err) context_->fail("cannot reach the broker " + address.display());
  set_timeout(timeout);
  if (!address.password.empty()) {
    RedisReply auth = command({"AUTH", address.password});
    if (auth.is_error())
      throw RedisError("the broker " + address.display() + " refused AUTH: " + auth.str);
  }
  if (address.db != 0) {
    RedisReply select = command({"SELECT", std::to_string(address.db)});
    if (select.is_error())
      throw RedisError("SELECT failed on " + address.display() + ": " + select.str);
  }
}

RedisClient::~RedisClient() = default;
RedisClient::RedisClient(RedisClient&&) noexcept = default;
RedisClient& RedisClient::operator=(RedisClient&&) noexcept = default;

void RedisClient::set_timeout(std::chrono::milliseconds timeout) {
  (void)redisSetTimeout(context_->c, to_timeval(timeout));
}

void RedisClient::append(const RedisArgs& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  argv.reserve(args.size());
  lengths.reserve(args.size());
  for (const auto& a : args) {
    argv.push_back(a.data());
    lengths.push_back(a.size());
  }
  if (redisAppendCommandArgv(context_->c, static_cast<int>(argv.size()), argv.data(),
                             lengths.data()) != REDIS_OK) {
    context_->fail("cannot send " + args.front());
  }
}

RedisReply RedisClient::read() {
  void* reply = nullptr;
  if (redisGetReply(context_->c, &reply) != REDIS_OK || !reply) context_->fail("broker connection");
  RedisReply out = copy_reply(reply);
  freeReplyObject(reply);
  return out;
}

RedisReply RedisClient::command(const RedisArgs& args) {
  append(args);
  return read();
}

}  // namespace plumber::detail
