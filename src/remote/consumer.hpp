#pragma once
// One consumer of a remote node's group (the whole story: remote_consumer.cpp).
// Taking and running entries: consumer_entries.cpp; the heartbeat (the
// registration, claims, leaving): consumer_heartbeat.cpp.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <iostream>
#include <string>
#include <unordered_map>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "remote/redis_async.hpp"
#include "remote/remote_consumer.hpp"
#include "runtime/step_runner.hpp"

namespace plumber::detail::remote_consumer {

using namespace std::chrono_literals;
using asio::use_awaitable;

/// Milliseconds since the epoch, on this machine's clock.
std::int64_t system_ms();

/// A task entry as the broker delivered it.
struct Entry {
  std::string stream, id;
  RedisReply fields;
  Delivery delivery;
  std::uint64_t runs = 0;  ///< times a worker started its step before (the `runs` hash)
};

/// What this consumer did, for `--stats`.
struct ConsumerCounters {
  std::uint64_t entries = 0;        ///< task entries taken (read or claimed)
  std::uint64_t messages = 0;       ///< messages run by the step
  std::uint64_t claimed = 0;        ///< entries taken over with XAUTOCLAIM
  std::uint64_t expired = 0;        ///< messages not run: their deadline passed at the broker
  std::uint64_t failed = 0;         ///< entries whose step failed (an error record)
  std::uint64_t dead_lettered = 0;  ///< entries moved to the dead-letter stream
  std::uint64_t reruns = 0;         ///< batches run again after their worker process died
};

class Consumer {
 public:
  Consumer(const Strand& strand, const NodeSpec& node, const RemoteKeys& keys,
           const BrokerAddress& address, StepRunner& runner, std::size_t capacity,
           std::size_t procs)
      : strand_(strand),
        node_(node),
        keys_(keys),
        address_(address),
        runner_(runner),
        capacity_(capacity),
        pooled_(procs > 0),
        name_(host_name() + ":" + std::to_string(::getpid())),
        description_(host_name() + " pid " + std::to_string(::getpid()) +
                     (procs > 0 ? " procs " + std::to_string(procs) : "")),
        reader_(strand, address),
        commands_(strand, address),
        changed_(strand, Clock::time_point::max()),
        beat_timer_(strand),
        beat_every_(std::clamp<std::chrono::milliseconds>(node.remote->claim_idle / 3, 50ms, 1s)) {}

  /// Until stop(): then finishes the entries taken, and leaves the group.
  asio::awaitable<void> run() {
    asio::co_spawn(strand_, heartbeat(), [this](std::exception_ptr) {
      heartbeat_done_ = true;
      changed_.cancel();
    });
    co_await read_entries();
    while (!running_.empty())
      co_await wait_for_change();
    leaving_ = true;
    beat_timer_.cancel();
    while (!heartbeat_done_)
      co_await wait_for_change();
    co_await leave();
    reader_.close();
    commands_.close();
  }

  void stop() {
    stopping_ = true;
    changed_.cancel();
    beat_timer_.cancel();
  }

  /// After a failure of run() itself: the heartbeat ends too.
  void abandon() {
    leaving_ = true;
    stop();
  }

  const ConsumerCounters& counters() const noexcept { return counters_; }
  const std::string& name() const noexcept { return name_; }

 private:
  /// Wakes when an entry finished or stop() was called (the caller checks again).
  asio::awaitable<void> wait_for_change() {
    co_await changed_.async_wait(asio::as_tuple(use_awaitable));
  }

  asio::awaitable<void> pause(std::chrono::milliseconds delay) {
    asio::steady_timer timer(strand_, delay);
    co_await timer.async_wait(asio::as_tuple(use_awaitable));
  }

  void report(const std::string& what) {
    std::cerr << "plumber worker " << name_ << ": " << what << '\n';
  }

  // --- taking entries ------------------------------------------------------------

  asio::awaitable<void> read_entries();

  /// Connects the reading connection, creates the group on every lane, and
  /// takes again the entries delivered to this consumer before the connection
  /// broke (those not running still).
  asio::awaitable<void> connect_reader();

  /// Starts a coroutine per entry of an XREADGROUP reply (streams in the
  /// order asked: highest lane first).
  void take(RedisReply& reply, const std::unordered_map<std::string, std::uint64_t>& deliveries);

  void start(Entry entry);

  // --- running an entry ----------------------------------------------------------

  asio::awaitable<void> handle(Entry e);

  std::string poison_text(std::uint64_t runs) const;

  /// Moves an entry to the dead-letter stream and answers its host with a
  /// final error (`reply` empty: a malformed entry, nobody to answer).
  asio::awaitable<void> dead_letter(const Entry& e, RedisArgs fields, const std::string& reply,
                                    std::uint64_t request, const std::string& reason);

  /// Sends a command that must reach the broker, through reconnections. While
  /// stopping, it gives up after a few tries (the entry stays pending, for
  /// another consumer to claim).
  asio::awaitable<bool> store(const RedisArgs& args);

  asio::awaitable<void> connect_commands();

  // --- heartbeat -----------------------------------------------------------------

  asio::awaitable<void> heartbeat();

  asio::awaitable<void> register_self();

  /// Resets the idle time of the entries this consumer is running (XCLAIM
  /// JUSTID to itself), so that a long batch is not taken over while this
  /// consumer lives; a consumer that stops beating loses them after claim_idle_ms.
  asio::awaitable<void> keep_running_entries();

  /// Takes over entries other consumers left idle; dead-letters those
  /// delivered too often.
  asio::awaitable<void> claim_idle();

  /// Removes consumers that died (no registration) with nothing pending, so
  /// that killed workers do not accumulate in the group.
  asio::awaitable<void> forget_dead_consumers();

  /// Leaves the group when nothing is pending for this consumer (pending
  /// entries stay claimable by the others).
  asio::awaitable<void> leave();

  Strand strand_;
  const NodeSpec& node_;
  const RemoteKeys& keys_;
  BrokerAddress address_;
  StepRunner& runner_;
  std::size_t capacity_;  ///< entries held at once (running, or waiting for a worker process)
  bool pooled_;
  std::string name_, description_;
  AsyncRedis reader_, commands_;
  bool connecting_ = false;
  asio::steady_timer changed_;  // never expires: cancel() wakes its waiters
  asio::steady_timer beat_timer_;
  std::chrono::milliseconds beat_every_;
  bool stopping_ = false;  // stop(): take no more entries
  bool leaving_ = false;   // every entry taken is done: the heartbeat ends
  bool heartbeat_done_ = false;
  std::unordered_map<std::string, std::string> running_;  // entry id -> its stream
  std::int64_t offset_ms_ = 0;                            // the broker's clock minus ours
  ConsumerCounters counters_;
};

}  // namespace plumber::detail::remote_consumer
