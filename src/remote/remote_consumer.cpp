// One consumer of a remote node's group, on one strand with two broker
// connections: one blocks in XREADGROUP (highest lane first, only while the
// consumer has room for another batch), the other stores results. Each entry
// is one coroutine: its messages whose deadline passed at the broker are not
// run, the others go to the step runner (inline, or the worker pool of
// `--procs`), and one script stores the results in the host's stream and
// acknowledges the entry (results before the acknowledgement, atomically).
// A heartbeat renews the registration, keeps this consumer's entries from
// looking idle, and claims the entries other consumers left idle longer than
// claim_idle_ms (XAUTOCLAIM). Before each run of the step the entry's count of
// runs goes up (a hash on the broker): an entry whose step was started
// max_deliveries times without a result becomes a dead letter and an error
// record, while entries a dead consumer had only read ahead run normally.
#include "remote/remote_consumer.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <exception>
#include <iostream>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "remote/redis_async.hpp"
#include "runtime/step_runner.hpp"

namespace plumber::detail {
namespace {

using namespace std::chrono_literals;
using asio::use_awaitable;

/// Stores the results (when the host's stream still exists), acknowledges and
/// deletes the task, and forgets its count of runs: one atomic step.
constexpr const char* kStoreScript = R"(
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3)) end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
)";

/// Dead letters kept at most (approximately): the stream is for inspection.
constexpr const char* kDeadLetterLimit = "10000";

std::int64_t system_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// The broker's clock when it added the entry: the milliseconds of its id.
std::int64_t entry_ms(const std::string& id) {
  std::int64_t ms = 0;
  std::from_chars(id.data(), id.data() + id.size(), ms);
  return ms;
}

/// The value of field `name` of a stream entry ([name, value, ...]), or "".
std::string field_of(const RedisReply& fields, std::string_view name) {
  for (std::size_t i = 0; i + 1 < fields.elements.size(); i += 2) {
    if (fields.elements[i].str == name) return fields.elements[i + 1].str;
  }
  return {};
}

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

  asio::awaitable<void> read_entries() {
    auto delay = 50ms;
    bool broken = false;
    while (!stopping_) {
      try {
        if (!reader_.connected()) {
          co_await connect_reader();
          if (broken) report("connected to the broker " + address_.display() + " again");
          broken = false;
          delay = 50ms;
        }
        while (running_.size() >= capacity_ && !stopping_)
          co_await wait_for_change();
        if (stopping_) break;
        RedisArgs args{"XREADGROUP", "GROUP", keys_.group,
                       name_,        "COUNT", std::to_string(capacity_ - running_.size()),
                       "BLOCK",      "500",   "STREAMS"};
        for (auto it = keys_.tasks.rbegin(); it != keys_.tasks.rend(); ++it)
          args.push_back(*it);
        for (std::size_t i = 0; i < keys_.tasks.size(); ++i)
          args.push_back(">");
        RedisReply reply = co_await reader_.command(args);
        if (reply.is_error()) {
          // NOGROUP: the broker lost the group (restarted without its data).
          throw RedisError("XREADGROUP: " + reply.str);
        }
        take(reply, {});
      } catch (const RedisError& e) {
        if (!broken) report(std::string(e.what()) + "; reconnecting");
        broken = true;
        reader_.close();
      }
      if (broken && !stopping_) {
        co_await pause(delay);
        delay = std::min<std::chrono::milliseconds>(delay * 2, 2000ms);
      }
    }
  }

  /// Connects the reading connection, creates the group on every lane, and
  /// takes again the entries delivered to this consumer before the connection
  /// broke (those not running still).
  asio::awaitable<void> connect_reader() {
    co_await reader_.connect();
    for (const auto& stream : keys_.tasks) {
      RedisArgs create{"XGROUP", "CREATE", stream, keys_.group, "0", "MKSTREAM"};
      RedisReply r = co_await reader_.command(create);
      if (r.is_error() && !r.str.starts_with("BUSYGROUP")) throw RedisError(r.str);
    }
    for (auto it = keys_.tasks.rbegin(); it != keys_.tasks.rend(); ++it) {
      RedisArgs pending{"XPENDING", *it, keys_.group, "-", "+", "1000", name_};
      RedisReply owned = co_await reader_.command(pending);
      if (owned.type != RedisReply::Type::array || owned.elements.empty()) continue;
      std::unordered_map<std::string, std::uint64_t> deliveries;
      for (const RedisReply& p : owned.elements) {
        if (p.elements.size() >= 4)
          deliveries[p.elements[0].str] = static_cast<std::uint64_t>(p.elements[3].integer);
      }
      RedisArgs again{"XREADGROUP", "GROUP",   keys_.group, name_, "COUNT",
                      "1000",       "STREAMS", *it,         "0"};
      RedisReply reply = co_await reader_.command(again);
      if (reply.is_error()) throw RedisError("XREADGROUP: " + reply.str);
      take(reply, deliveries);
    }
  }

  /// Starts a coroutine per entry of an XREADGROUP reply (streams in the
  /// order asked: highest lane first).
  void take(RedisReply& reply, const std::unordered_map<std::string, std::uint64_t>& deliveries) {
    if (reply.type != RedisReply::Type::array) return;
    for (RedisReply& stream : reply.elements) {
      if (stream.elements.size() < 2) continue;
      const std::string& key = stream.elements[0].str;
      for (RedisReply& entry : stream.elements[1].elements) {
        // A nil entry: deleted while pending (acknowledged already).
        if (entry.elements.size() < 2 || entry.elements[1].is_nil()) continue;
        std::string id = entry.elements[0].str;
        if (running_.contains(id)) continue;
        Delivery delivery;
        if (auto it = deliveries.find(id); it != deliveries.end()) delivery.count = it->second;
        start(Entry{key, std::move(id), std::move(entry.elements[1]), std::move(delivery)});
      }
    }
  }

  void start(Entry entry) {
    ++counters_.entries;
    if (entry.delivery.claimed) ++counters_.claimed;
    running_.emplace(entry.id, entry.stream);
    const std::string id = entry.id;
    asio::co_spawn(strand_, handle(std::move(entry)), [this, id](std::exception_ptr e) {
      if (e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          report("entry " + id + ": " + ex.what());
        } catch (...) {
          report("entry " + id + ": unknown exception");
        }
      }
      running_.erase(id);
      changed_.cancel();
    });
  }

  // --- running an entry ----------------------------------------------------------

  asio::awaitable<void> handle(Entry e) {
    // The broker's clock says how long the entry waited there.
    const std::int64_t queued =
        std::max<std::int64_t>(0, system_ms() + offset_ms_ - entry_ms(e.id));
    RemoteTask task;
    std::optional<std::string> malformed;
    try {
      task = decode_task(e.fields, std::chrono::milliseconds(queued));
    } catch (const std::exception& ex) {
      malformed = ex.what();
    }
    if (malformed) {
      co_await dead_letter(e, {}, {}, 0, "malformed task entry: " + *malformed);
      co_return;
    }
    const auto now = Clock::now();
    Clock::time_point latest = Clock::time_point::min();
    std::erase_if(task.batch, [&](const Message& m) {
      if (m.deadline > now) {
        latest = std::max(latest, m.deadline);
        return false;
      }
      e.delivery.expired.push_back(m.id);
      return true;
    });
    counters_.expired += e.delivery.expired.size();

    std::vector<Message> results;
    std::string failure;
    if (!task.batch.empty()) {
      // A worker process that dies takes the batch with it: run it again from a copy.
      std::optional<std::vector<Message>> original;
      if (pooled_) original = task.batch;
      const AttemptLimits limits{.timeout = std::nullopt, .deadline = latest};
      for (std::uint64_t runs = e.runs + 1;; ++runs) {
        // Counted before the step starts: if this process dies in it, the
        // consumer that claims the entry knows it ran (read-ahead entries did not).
        RedisArgs count{"HINCRBY", keys_.runs, e.id, "1"};
        commands_.send(count);
        results.clear();
        StepOutcome outcome = co_await runner_.run(task.batch, results, limits);
        if (outcome.ok()) break;
        if (!outcome.worker_died || !original) {
          failure = std::move(outcome.failure);
          ++counters_.failed;
          break;
        }
        if (runs >= node_.remote->max_deliveries) {
          RedisArgs fields;
          encode_task(fields, task.request, task.reply, *original);
          co_await dead_letter(e, std::move(fields), task.reply, task.request,
                               poison_text(runs) + " (" + outcome.failure + ")");
          co_return;
        }
        report(outcome.failure + "; running its batch again");
        ++counters_.reruns;
        task.batch = *original;
      }
      if (failure.empty()) counters_.messages += task.batch.size();
    }
    RedisArgs args{"EVAL", kStoreScript, "3", task.reply, e.stream, keys_.runs, keys_.group, e.id};
    if (failure.empty()) {
      encode_results(args, task.request, name_, e.delivery, results);
    } else {
      encode_failure(args, task.request, name_, e.delivery, failure, false);
    }
    co_await store(args);
  }

  std::string poison_text(std::uint64_t runs) const {
    return "started " + std::to_string(runs) + " times without a result (max_deliveries " +
           std::to_string(node_.remote->max_deliveries) + "): its workers died or hung";
  }

  /// Moves an entry to the dead-letter stream and answers its host with a
  /// final error (`reply` empty: a malformed entry, nobody to answer).
  asio::awaitable<void> dead_letter(const Entry& e, RedisArgs fields, const std::string& reply,
                                    std::uint64_t request, const std::string& reason) {
    ++counters_.dead_lettered;
    const Delivery& delivery = e.delivery;
    RedisArgs dead{"XADD",           keys_.dead,
                   "MAXLEN",         "~",
                   kDeadLetterLimit, "*",
                   "stream",         e.stream,
                   "entry",          e.id,
                   "reason",         reason,
                   "deliveries",     std::to_string(delivery.count)};
    for (auto& f : fields)
      dead.push_back(std::move(f));
    co_await store(dead);
    // The script adds the answer only where its first key exists: none for nobody.
    RedisArgs answer{
        "EVAL",   kStoreScript, "3",         reply.empty() ? keys_.prefix + ":nobody" : reply,
        e.stream, keys_.runs,   keys_.group, e.id};
    if (!reply.empty()) {
      encode_failure(answer, request, name_, delivery, reason, true);
    } else {
      answer.push_back("_");
      answer.push_back("_");
    }
    co_await store(answer);
  }

  /// Sends a command that must reach the broker, through reconnections. While
  /// stopping, it gives up after a few tries (the entry stays pending, for
  /// another consumer to claim).
  asio::awaitable<bool> store(const RedisArgs& args) {
    auto delay = 50ms;
    for (int attempt = 1;; ++attempt) {
      try {
        co_await connect_commands();
        RedisReply reply = co_await commands_.command(args);
        if (!reply.is_error()) co_return true;
        if (!reply.is_transient_error()) {
          report("the broker refused " + args.front() + ": " + reply.str);
          co_return false;
        }
      } catch (const RedisError&) {
        // The read loop reports the outage.
      }
      if (stopping_ && attempt >= 5) {
        report(
            "gave up storing a result while stopping; its entry stays pending for another "
            "worker");
        co_return false;
      }
      co_await pause(delay);
      delay = std::min<std::chrono::milliseconds>(delay * 2, 2000ms);
    }
  }

  asio::awaitable<void> connect_commands() {
    while (connecting_)
      co_await pause(10ms);
    if (commands_.connected()) co_return;
    connecting_ = true;
    struct Done {
      bool& flag;
      ~Done() { flag = false; }
    } done{connecting_};
    co_await commands_.connect();
  }

  // --- heartbeat -----------------------------------------------------------------

  asio::awaitable<void> heartbeat() {
    std::uint64_t beats = 0;
    while (!leaving_) {
      try {
        co_await connect_commands();
        co_await register_self();
        co_await keep_running_entries();
        if (!stopping_) co_await claim_idle();
        if (++beats % 10 == 0) co_await forget_dead_consumers();
      } catch (const RedisError&) {
        // The read loop reports the outage and reconnects.
      } catch (const std::exception& e) {
        report(std::string("heartbeat: ") + e.what());
      }
      if (leaving_) break;
      beat_timer_.expires_after(beat_every_);
      co_await beat_timer_.async_wait(asio::as_tuple(use_awaitable));
    }
  }

  asio::awaitable<void> register_self() {
    RedisArgs set{"SET", keys_.worker(name_), description_, "PX", "10000"};
    co_await commands_.command(set);
    RedisArgs add{"SADD", keys_.workers, name_};
    co_await commands_.command(add);
    RedisArgs time{"TIME"};
    const auto before = system_ms();
    RedisReply now = co_await commands_.command(time);
    if (now.elements.size() == 2) {
      const std::int64_t broker_ms =
          std::stoll(now.elements[0].str) * 1000 + std::stoll(now.elements[1].str) / 1000;
      offset_ms_ = broker_ms - (before + system_ms()) / 2;
    }
  }

  /// Resets the idle time of the entries this consumer is running (XCLAIM
  /// JUSTID to itself), so that a long batch is not taken over while this
  /// consumer lives; a consumer that stops beating loses them after claim_idle_ms.
  asio::awaitable<void> keep_running_entries() {
    for (const auto& stream : keys_.tasks) {
      std::vector<std::string> ids;
      for (const auto& [id, lane] : running_) {
        if (lane == stream) ids.push_back(id);
      }
      if (ids.empty()) continue;
      // Only entries still this consumer's: never take one back from a consumer that claimed it.
      RedisArgs owned{"XPENDING", stream, keys_.group, "-", "+", "10000", name_};
      RedisReply mine = co_await commands_.command(owned);
      std::unordered_set<std::string> ours;
      for (const RedisReply& p : mine.elements) {
        if (!p.elements.empty()) ours.insert(p.elements[0].str);
      }
      RedisArgs touch{"XCLAIM", stream, keys_.group, name_, "0"};
      for (auto& id : ids) {
        if (ours.contains(id)) touch.push_back(std::move(id));
      }
      if (touch.size() == 5) continue;
      touch.push_back("JUSTID");
      co_await commands_.command(touch);
    }
  }

  /// Takes over entries other consumers left idle; dead-letters those
  /// delivered too often.
  asio::awaitable<void> claim_idle() {
    const std::string idle = std::to_string(node_.remote->claim_idle.count());
    for (auto it = keys_.tasks.rbegin(); it != keys_.tasks.rend(); ++it) {
      if (running_.size() >= capacity_) co_return;
      const std::string& stream = *it;
      RedisArgs args{
          "XAUTOCLAIM", stream, keys_.group, name_,
          idle,         "0-0",  "COUNT",     std::to_string(capacity_ - running_.size())};
      RedisReply claimed = co_await commands_.command(args);
      if (claimed.is_error() || claimed.elements.size() < 2) continue;
      for (RedisReply& entry : claimed.elements[1].elements) {
        if (entry.elements.size() < 2 || entry.elements[1].is_nil()) continue;
        const std::string id = entry.elements[0].str;
        if (running_.contains(id)) continue;
        RedisArgs info_args{"XPENDING", stream, keys_.group, id, id, "1"};
        RedisReply info = co_await commands_.command(info_args);
        Delivery delivery{.count = 2, .claimed = true};
        if (!info.elements.empty() && info.elements[0].elements.size() >= 4)
          delivery.count = static_cast<std::uint64_t>(info.elements[0].elements[3].integer);
        RedisArgs runs_args{"HGET", keys_.runs, id};
        RedisReply runs = co_await commands_.command(runs_args);
        Entry e{stream, id, std::move(entry.elements[1]), std::move(delivery)};
        if (runs.type == RedisReply::Type::string) e.runs = std::stoull(runs.str);
        if (e.runs >= node_.remote->max_deliveries) {
          RedisArgs fields;
          for (const RedisReply& f : e.fields.elements)
            fields.push_back(f.str);
          const std::string reply = field_of(e.fields, "h");
          const std::string request = field_of(e.fields, "r");
          std::uint64_t request_id = 0;
          std::from_chars(request.data(), request.data() + request.size(), request_id);
          co_await dead_letter(e, std::move(fields), reply, request_id, poison_text(e.runs));
          continue;
        }
        start(std::move(e));
      }
    }
  }

  /// Removes consumers that died (no registration) with nothing pending, so
  /// that killed workers do not accumulate in the group.
  asio::awaitable<void> forget_dead_consumers() {
    for (const auto& stream : keys_.tasks) {
      RedisArgs list{"XINFO", "CONSUMERS", stream, keys_.group};
      RedisReply consumers = co_await commands_.command(list);
      if (consumers.type != RedisReply::Type::array) continue;
      for (const RedisReply& c : consumers.elements) {
        std::string name;
        long long pending = -1;
        for (std::size_t i = 0; i + 1 < c.elements.size(); i += 2) {
          if (c.elements[i].str == "name") name = c.elements[i + 1].str;
          if (c.elements[i].str == "pending") pending = c.elements[i + 1].integer;
        }
        if (name.empty() || name == name_ || pending != 0) continue;
        RedisArgs exists{"EXISTS", keys_.worker(name)};
        if ((co_await commands_.command(exists)).integer != 0) continue;
        RedisArgs forget{"XGROUP", "DELCONSUMER", stream, keys_.group, name};
        co_await commands_.command(forget);
      }
    }
  }

  /// Leaves the group when nothing is pending for this consumer (pending
  /// entries stay claimable by the others).
  asio::awaitable<void> leave() {
    try {
      co_await connect_commands();
      for (const auto& stream : keys_.tasks) {
        RedisArgs pending{"XPENDING", stream, keys_.group, "-", "+", "1", name_};
        RedisReply mine = co_await commands_.command(pending);
        if (mine.type == RedisReply::Type::array && mine.elements.empty()) {
          RedisArgs forget{"XGROUP", "DELCONSUMER", stream, keys_.group, name_};
          co_await commands_.command(forget);
        }
      }
      RedisArgs del{"DEL", keys_.worker(name_)};
      co_await commands_.command(del);
      RedisArgs remove{"SREM", keys_.workers, name_};
      co_await commands_.command(remove);
    } catch (const RedisError&) {
      // The broker is gone: the registration expires by itself.
    }
  }

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

void print_stats(const Consumer& consumer, const NodeSpec& node,
                 const std::optional<WorkerPoolStats>& pool) {
  const ConsumerCounters& c = consumer.counters();
  std::fprintf(stderr, "%-14s %8s %10s %8s %8s %7s %6s %7s  %s\n", "consumer", "entries",
               "messages", "claimed", "expired", "failed", "dead", "reruns", "name");
  std::fprintf(
      stderr, "%-14s %8llu %10llu %8llu %8llu %7llu %6llu %7llu  %s\n", node.id.c_str(),
      static_cast<unsigned long long>(c.entries), static_cast<unsigned long long>(c.messages),
      static_cast<unsigned long long>(c.claimed), static_cast<unsigned long long>(c.expired),
      static_cast<unsigned long long>(c.failed), static_cast<unsigned long long>(c.dead_lettered),
      static_cast<unsigned long long>(c.reruns), consumer.name().c_str());
  if (!pool) return;
  std::string pids;
  for (const auto& one : pool->workers) {
    if (!pids.empty()) pids += ',';
    pids += std::to_string(one.pid);
  }
  std::fprintf(stderr, "%-14s %5s %10s %8s %8s %7s  %s\n", "workers", "procs", "tasks", "batches",
               "restarts", "deaths", "pids");
  std::fprintf(stderr, "%-14s %5zu %10llu %8llu %8llu %7llu  %s\n", node.id.c_str(), pool->procs,
               static_cast<unsigned long long>(pool->tasks_done),
               static_cast<unsigned long long>(pool->batches_done),
               static_cast<unsigned long long>(pool->restarts),
               static_cast<unsigned long long>(pool->deaths), pids.c_str());
}

}  // namespace

int run_consumer(const NodeSpec& node, const RemoteKeys& keys, const BrokerAddress& address,
                 std::size_t priorities, const ConsumerOptions& options) {
  asio::io_context io;
  const Strand strand = asio::make_strand(io.get_executor());
  // The step as this machine runs it: in process, or `procs` worker processes.
  NodeSpec local = node;
  local.remote.reset();
  local.autoscale.reset();
  local.procs = options.procs;
  local.concurrency = 1;
  const RunnerContext context{.node = local,
                              .strand = strand,
                              .priorities = priorities,
                              .worker_start_timeout = options.start_timeout,
                              .graph_name = keys.prefix};
  std::unique_ptr<StepRunner> runner;
  try {
    std::unique_ptr<Transform> step;
    if (options.procs == 0) step = node.info->make_transform(node.params);
    runner = make_step_runner(context, std::move(step));
    runner->launch();
    runner->on_start();
  } catch (const std::exception& e) {
    std::cerr << "plumber worker: node \"" << node.id
              << "\": the step could not start: " << e.what() << '\n';
    return 1;
  }
  // Entries held at once: at least one batch waiting besides each running one
  // (so a worker process never waits for the broker), and about 64 messages
  // for small batches. What it holds, a higher lane cannot overtake.
  const std::size_t running = std::max<std::size_t>(1, options.procs);
  const std::size_t capacity =
      std::max(2 * running, 64 / std::max<std::size_t>(1, node.batch_size));
  Consumer consumer(strand, node, keys, address, *runner, capacity, options.procs);

  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](const boost::system::error_code& ec, int) {
    if (!ec) asio::post(strand, [&] { consumer.stop(); });
  });
  runner->serve([&](asio::awaitable<void> work) {
    asio::co_spawn(strand, std::move(work), [](std::exception_ptr) {});
  });
  int code = 0;
  asio::co_spawn(strand, consumer.run(), [&](std::exception_ptr e) {
    if (e) {
      code = 1;
      consumer.abandon();
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        std::cerr << "plumber worker: node \"" << node.id << "\": " << ex.what() << '\n';
      } catch (...) {
      }
    }
    runner->close();
    signals.cancel();
  });
  io.run();
  if (options.print_stats) print_stats(consumer, node, runner->worker_stats());
  return code;
}

}  // namespace plumber::detail
