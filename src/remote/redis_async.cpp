// hiredis' asynchronous API driven by Asio, after hiredis' own adapters
// (adapters/libevent.h): hiredis asks for read and write events through
// `ev.addRead`/`addWrite`/...; each becomes one async_wait on the socket, whose
// handler calls redisAsyncHandleRead/Write. hiredis re-arms what it needs.
#include "remote/redis_async.hpp"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <chrono>
#include <optional>
#include <utility>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "exec/program.hpp"

namespace plumber::detail {

struct AsyncRedis::State : std::enable_shared_from_this<State> {
  State(const Strand& s, BrokerAddress a) : strand(s), address(std::move(a)), signal(s) {}

  Strand strand;
  BrokerAddress address;
  redisAsyncContext* context = nullptr;
  std::optional<asio::posix::stream_descriptor> socket;
  bool reading = false, writing = false;
  bool read_armed = false, write_armed = false;
  bool connected = false;     // TCP connected (hiredis' REDIS_CONNECTED)
  bool ready = false;         // connected, logged in, database selected
  std::string connect_error;  // why the last connection attempt failed
  asio::steady_timer signal;  // wakes connect() when hiredis reports the outcome

  void arm_read() {
    if (read_armed || !socket) return;
    read_armed = true;
    socket->async_wait(asio::posix::descriptor_base::wait_read,
                       [self = shared_from_this()](boost::system::error_code ec) {
                         self->read_armed = false;
                         if (ec || !self->context || !self->reading) return;
                         redisAsyncHandleRead(self->context);
                       });
  }
  void arm_write() {
    if (write_armed || !socket) return;
    write_armed = true;
    socket->async_wait(asio::posix::descriptor_base::wait_write,
                       [self = shared_from_this()](boost::system::error_code ec) {
                         self->write_armed = false;
                         if (ec || !self->context || !self->writing) return;
                         redisAsyncHandleWrite(self->context);
                       });
  }

  static State* of(void* data) { return static_cast<State*>(data); }
  static void add_read(void* data) {
    of(data)->reading = true;
    of(data)->arm_read();
  }
  static void del_read(void* data) { of(data)->reading = false; }
  static void add_write(void* data) {
    of(data)->writing = true;
    of(data)->arm_write();
  }
  static void del_write(void* data) { of(data)->writing = false; }
  // hiredis frees the context after this: forget it; the fd is hiredis' to close.
  static void cleanup(void* data) {
    State* s = of(data);
    s->context = nullptr;
    s->connected = s->ready = false;
    s->reading = s->writing = false;
    if (s->socket) {
      (void)s->socket->release();  // cancels the waits; hiredis closes the fd
      s->socket.reset();
    }
    s->signal.cancel();
  }
  static void on_connect(const redisAsyncContext* c, int status) {
    State* s = of(c->data);
    if (status == REDIS_OK) {
      s->connected = true;
    } else {
      s->connect_error = c->errstr[0] ? c->errstr : "connection failed";
    }
    s->signal.cancel();
  }
  static void on_disconnect(const redisAsyncContext*, int) {}
};

namespace {

struct Operation {
  AsyncRedis::Handler handler;
  Strand strand;
};

void complete(std::unique_ptr<Operation> op, boost::system::error_code ec, RedisReply reply) {
  auto strand = op->strand;
  asio::post(strand, [handler = std::move(op->handler), ec, reply = std::move(reply)]() mutable {
    std::move(handler)(ec, std::move(reply));
  });
}

void on_reply(redisAsyncContext*, void* reply, void* data) {
  std::unique_ptr<Operation> op(static_cast<Operation*>(data));
  if (!reply) {
    complete(std::move(op), asio::error::connection_reset, {});
    return;
  }
  complete(std::move(op), {}, copy_reply(reply));
}

}  // namespace

AsyncRedis::AsyncRedis(const Strand& strand, BrokerAddress address)
    : state_(std::make_shared<State>(strand, std::move(address))) {}

AsyncRedis::~AsyncRedis() {
  close();
}

bool AsyncRedis::connected() const noexcept {
  return state_->ready;
}

void AsyncRedis::close() {
  if (redisAsyncContext* c = state_->context) redisAsyncFree(c);  // cleanup() runs inside
}

asio::awaitable<void> AsyncRedis::connect() {
  // hiredis writes with write(2): to a broker that died, that must be EPIPE,
  // not a SIGPIPE that ends this process without a word.
  ignore_sigpipe_once();
  close();
  State& s = *state_;
  s.connect_error.clear();
  redisAsyncContext* c = redisAsyncConnect(s.address.host.c_str(), s.address.port);
  if (!c) throw RedisError("cannot allocate a hiredis context");
  if (c->err) {
    std::string why = c->errstr;
    redisAsyncFree(c);
    throw RedisError("cannot reach the broker " + s.address.display() + ": " + why);
  }
  c->data = &s;
  c->ev.data = &s;
  c->ev.addRead = &State::add_read;
  c->ev.delRead = &State::del_read;
  c->ev.addWrite = &State::add_write;
  c->ev.delWrite = &State::del_write;
  c->ev.cleanup = &State::cleanup;
  s.context = c;
  s.socket.emplace(s.strand, c->c.fd);
  redisAsyncSetConnectCallback(c, &State::on_connect);
  redisAsyncSetDisconnectCallback(c, &State::on_disconnect);
  // As hiredis' adapters do: the connection completes when the socket is writable.
  State::add_read(&s);
  State::add_write(&s);
  auto self = state_;  // outlives this frame's suspension
  while (!s.connected && s.context && s.connect_error.empty()) {
    s.signal.expires_after(std::chrono::seconds(5));
    auto [ec] = co_await s.signal.async_wait(asio::as_tuple(asio::use_awaitable));
    if (!ec) {
      close();
      throw RedisError("cannot reach the broker " + s.address.display() + ": connect timed out");
    }
  }
  if (!s.connected) {
    close();
    if (s.connect_error.empty()) s.connect_error = "connection closed";
    throw RedisError("cannot reach the broker " + s.address.display() + ": " + s.connect_error);
  }
  s.ready = true;
  if (!s.address.password.empty()) {
    // (The arguments are built outside the co_await: GCC 12 cannot keep an
    // initializer list's array across a suspension.)
    RedisArgs args{"AUTH", s.address.password};
    RedisReply auth = co_await command(std::move(args));
    if (auth.is_error()) {
      close();
      throw RedisError("the broker " + s.address.display() + " refused AUTH: " + auth.str);
    }
  }
  if (s.address.db != 0) {
    RedisArgs args{"SELECT", std::to_string(s.address.db)};
    RedisReply select = co_await command(std::move(args));
    if (select.is_error()) {
      close();
      throw RedisError("SELECT failed on " + s.address.display() + ": " + select.str);
    }
  }
}

void AsyncRedis::start_command(const RedisArgs& args, Handler handler) {
  auto op = std::make_unique<Operation>(Operation{std::move(handler), state_->strand});
  if (!state_->context || !state_->ready) {
    complete(std::move(op), asio::error::not_connected, {});
    return;
  }
  Operation* raw = op.release();
  if (issue(args, &on_reply, raw) != REDIS_OK) {
    complete(std::unique_ptr<Operation>(raw), asio::error::not_connected, {});
  }
}

int AsyncRedis::issue(const RedisArgs& args, void (*callback)(redisAsyncContext*, void*, void*),
                      void* data) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  argv.reserve(args.size());
  lengths.reserve(args.size());
  for (const auto& a : args) {
    argv.push_back(a.data());
    lengths.push_back(a.size());
  }
  return redisAsyncCommandArgv(state_->context, callback, data, static_cast<int>(argv.size()),
                               argv.data(), lengths.data());
}

void AsyncRedis::send(const RedisArgs& args) {
  if (!state_->context || !state_->ready) return;
  if (issue(args, nullptr, nullptr) != REDIS_OK) return;
  // Written now (as far as the socket takes it), not at the next turn of the
  // loop: the caller may block, or die, before that.
  redisAsyncHandleWrite(state_->context);
}

asio::awaitable<RedisReply> AsyncRedis::command(const RedisArgs& args) {
  auto token = asio::as_tuple(asio::use_awaitable);
  auto [ec, reply] =
      co_await asio::async_initiate<decltype(token), void(boost::system::error_code, RedisReply)>(
          [this, &args](auto handler) { start_command(args, Handler(std::move(handler))); }, token);
  if (ec) throw RedisError("the broker " + state_->address.display() + ": " + ec.message());
  co_return std::move(reply);
}

}  // namespace plumber::detail
