// A remote node's consumer: taking entries from the broker (XREADGROUP, and
// again after a reconnection) and running each in a coroutine of its own:
// deadlines, the step runner, dead letters, storing the results. The class and
// the whole story: consumer.hpp, remote_consumer.cpp.
#include <charconv>
#include <optional>
#include <utility>
#include <vector>

#include "remote/consumer.hpp"

namespace plumber::detail::remote_consumer {
namespace {

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

/// The broker's clock when it added the entry: the milliseconds of its id.
std::int64_t entry_ms(const std::string& id) {
  std::int64_t ms = 0;
  std::from_chars(id.data(), id.data() + id.size(), ms);
  return ms;
}

}  // namespace

std::int64_t system_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

asio::awaitable<void> Consumer::read_entries() {
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

asio::awaitable<void> Consumer::connect_reader() {
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

void Consumer::take(RedisReply& reply,
                    const std::unordered_map<std::string, std::uint64_t>& deliveries) {
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

void Consumer::start(Entry entry) {
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

asio::awaitable<void> Consumer::handle(Entry e) {
  // The broker's clock says how long the entry waited there.
  const std::int64_t queued = std::max<std::int64_t>(0, system_ms() + offset_ms_ - entry_ms(e.id));
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

std::string Consumer::poison_text(std::uint64_t runs) const {
  return "started " + std::to_string(runs) + " times without a result (max_deliveries " +
         std::to_string(node_.remote->max_deliveries) + "): its workers died or hung";
}

asio::awaitable<void> Consumer::dead_letter(const Entry& e, RedisArgs fields,
                                            const std::string& reply, std::uint64_t request,
                                            const std::string& reason) {
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

asio::awaitable<bool> Consumer::store(const RedisArgs& args) {
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

asio::awaitable<void> Consumer::connect_commands() {
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

}  // namespace plumber::detail::remote_consumer
