// The step runner of a `remote` node: each batch becomes one entry of the
// node's task stream (a stream per priority lane); `plumber worker` processes
// in the node's consumer group run the step and add the results to this
// host's results stream, which one coroutine reads. Results are matched to
// their batch by request id: a result for a request already answered (an
// entry delivered twice) is dropped, so each input's outputs go on once.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <random>
#include <thread>
#include <unordered_map>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "log.hpp"
#include "remote/redis_async.hpp"
#include "remote/redis_client.hpp"
#include "remote/remote_codec.hpp"
#include "runtime/step_runner.hpp"

namespace plumber::detail {
namespace {

using namespace std::chrono_literals;
using asio::use_awaitable;

/// Results streams of hosts that are gone expire after this long.
constexpr auto kResultsTtl = 60s;

/// Unique per runner: host, process, a counter and a random tag.
std::string host_instance() {
  static std::atomic<std::uint64_t> counter{0};
  std::random_device random;
  return host_name() + ":" + std::to_string(::getpid()) + ":" + std::to_string(++counter) + ":" +
         std::to_string(random() % 100000);
}

BrokerAddress resolve_broker(const NodeSpec& node) {
  std::string url = node.remote->broker;
  if (url.empty()) {
    if (const char* env = std::getenv("PLUMBER_BROKER")) url = env;
  }
  if (url.empty()) {
    throw std::runtime_error(
        "no broker for this remote node: set \"broker\" in its \"remote\", \"broker\" in the "
        "graph's settings, or the PLUMBER_BROKER environment variable");
  }
  try {
    return parse_broker_url(url);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error("bad broker URL \"" + url + "\": " + e.what());
  }
}

bool cancelled(const asio::cancellation_state& state) {
  return state.cancelled() != asio::cancellation_type::none;
}

class RemoteRunner final : public StepRunner {
 public:
  explicit RemoteRunner(const RunnerContext& context)
      : node_(context.node),
        strand_(context.strand),
        keys_(context.graph_name, context.node.id, context.priorities),
        start_timeout_(context.worker_start_timeout),
        results_key_(keys_.results(host_instance())) {}

  void on_start() override {
    address_ = resolve_broker(node_);
    stats_.broker = address_.display();
    commands_.emplace(strand_, address_);
    reader_.emplace(strand_, address_);
    const auto give_up = Clock::now() + start_timeout_;
    std::optional<RedisClient> client;
    std::string last_error;
    while (!client) {
      try {
        client.emplace(address_, std::min<std::chrono::milliseconds>(start_timeout_, 2000ms));
      } catch (const RedisError& e) {
        last_error = e.what();
        if (Clock::now() + 200ms >= give_up) {
          throw std::runtime_error(last_error + " (gave up after " +
                                   std::to_string(start_timeout_.count()) + " ms)");
        }
        std::this_thread::sleep_for(200ms);
      }
    }
    create_results_stream(*client);
    // At least one worker has run on_start and takes work.
    for (;;) {
      if (live_workers(*client) > 0) return;
      if (Clock::now() >= give_up) {
        throw std::runtime_error("no worker joined the consumer group \"" + keys_.group + "\" on " +
                                 address_.display() + " within " +
                                 std::to_string(start_timeout_.count()) +
                                 " ms (start one: plumber worker GRAPH --node " + node_.id +
                                 " --broker " + address_.display() + ")");
      }
      std::this_thread::sleep_for(50ms);
    }
  }

  void serve(const std::function<void(asio::awaitable<void>)>& spawn) override {
    spawn(read_results());
  }
  void close() override {
    closed_ = true;
    wake_reader_if_done();
  }
  std::optional<RemoteStats> remote_stats() const override { return stats_; }

  asio::awaitable<StepOutcome> run(std::vector<Message>& batch, std::vector<Message>& results,
                                   const AttemptLimits& limits) override {
    StepOutcome outcome;
    Waiter waiter(strand_);
    const std::uint64_t request = next_request_++;
    std::uint8_t lane = 0;
    for (const Message& m : batch)
      lane = std::max(lane, m.priority);
    lane = static_cast<std::uint8_t>(std::min<std::size_t>(lane, keys_.tasks.size() - 1));
    RedisArgs args;
    // Again for each send: a deadline travels as the time left at that moment.
    auto encode = [&] {
      args = {"XADD", keys_.tasks[lane], "*"};
      encode_task(args, request, results_key_, batch);
    };

    const auto started = Clock::now();
    const auto timeout_at = limits.timeout ? started + *limits.timeout : Clock::time_point::max();
    const auto give_up_at = std::min(limits.deadline, timeout_at);
    pending_.emplace(request, &waiter);
    stats_.in_flight += batch.size();
    struct Forget {
      RemoteRunner& self;
      std::uint64_t request;
      std::size_t size;
      ~Forget() {
        self.pending_.erase(request);
        self.stats_.in_flight -= size;
        self.wake_reader_if_done();
      }
    } forget{*this, request, batch.size()};

    auto state = co_await asio::this_coro::cancellation_state;
    bool send = true;
    while (!waiter.result) {
      if (waiter.resend) {  // the broker came back: it may have lost the entry
        waiter.resend = false;
        send = true;
        ++stats_.resent;
      }
      if (send) {
        send = false;
        encode();
        std::optional<std::string> refused = co_await send_task(args, give_up_at, state);
        if (refused) {
          outcome.code = errc::step_failed;
          outcome.failure = "the broker refused the task: " + *refused;
          co_return outcome;
        }
        stats_.sent += batch.size();
        if (waiter.result) break;
      }
      waiter.timer.expires_at(give_up_at);
      auto [ec] = co_await waiter.timer.async_wait(asio::as_tuple(use_awaitable));
      if (waiter.result) break;
      if (cancelled(state)) throw boost::system::system_error(asio::error::operation_aborted);
      if (waiter.resend) continue;
      if (!ec) {
        outcome.code = errc::timed_out;
        if (timeout_at <= limits.deadline) {
          outcome.failure = timeout_text(*limits.timeout);
        } else {
          outcome.failure = "deadline passed while the step ran on a remote worker";
          outcome.expired = true;
        }
        co_return outcome;
      }
    }
    RemoteResult& result = *waiter.result;
    const auto rtt = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - started).count());
    observe_rtt(rtt);
    stats_.acked += batch.size();
    if (result.error) {
      outcome.code = errc::step_failed;
      outcome.failure = std::move(*result.error) + " (on worker " + result.consumer + ")";
      outcome.final = result.final;
      co_return outcome;
    }
    results = std::move(result.messages);
    outcome.expired_ids = std::move(result.expired);
    co_return outcome;
  }

 private:
  struct Waiter {
    explicit Waiter(const Strand& strand) : timer(strand) {}
    asio::steady_timer timer;
    std::optional<RemoteResult> result;
    bool resend = false;
  };

  /// The node is closed and nothing is outstanding: end the reader's blocking
  /// XREAD now rather than at its timeout (stopping a pipeline takes no wait).
  void wake_reader_if_done() {
    if (closed_ && pending_.empty() && reader_ && !reader_done_) {
      reader_done_ = true;
      reader_->close();
    }
  }

  void create_results_stream(RedisClient& client) {
    // An empty stream that expires unless this host keeps it alive: workers
    // drop results for a host that is gone.
    client.command({"XADD", results_key_, "MAXLEN", "0", "*", "_", "_"});
    client.command(
        {"PEXPIRE", results_key_, std::to_string(std::chrono::milliseconds(kResultsTtl).count())});
  }

  std::size_t live_workers(RedisClient& client) {
    RedisReply members = client.command({"SMEMBERS", keys_.workers});
    std::size_t live = 0;
    for (const RedisReply& m : members.elements) {
      if (client.command({"EXISTS", keys_.worker(m.str)}).integer == 1) {
        ++live;
      } else {
        client.command({"SREM", keys_.workers, m.str});
      }
    }
    return live;
  }

  static std::string ttl_text() {
    return std::to_string(std::chrono::milliseconds(kResultsTtl).count());
  }

  void observe_rtt(std::uint64_t ns) {
    stats_.rtt_ns += ns;
    const double seconds = static_cast<double>(ns) / 1e9;
    std::size_t i = 0;
    while (i < kStepSecondsBuckets.size() && seconds > kStepSecondsBuckets[i])
      ++i;
    if (i < stats_.rtt_buckets.size()) ++stats_.rtt_buckets[i];
  }

  /// Connects `redis` (with back-off) unless it is connected; true when it
  /// had to (re)connect. Throws operation_aborted when cancelled.
  asio::awaitable<bool> ensure_connected(AsyncRedis& redis, bool& connecting,
                                         const asio::cancellation_state& state) {
    bool reconnected = false;
    auto delay = 50ms;
    while (!redis.connected()) {
      if (cancelled(state)) throw boost::system::system_error(asio::error::operation_aborted);
      if (!connecting) {
        connecting = true;
        try {
          co_await redis.connect();
          connecting = false;
          reconnected = true;
          continue;
        } catch (const RedisError& e) {
          connecting = false;
          if (!warned_) {
            warned_ = true;
            log(spdlog::level::warn, {.node = node_.id}, "broker connection: {}; retrying",
                e.what());
          }
        }
      }
      asio::steady_timer timer(strand_, connecting ? 10ms : delay);
      co_await timer.async_wait(asio::as_tuple(use_awaitable));
      delay = std::min<std::chrono::milliseconds>(delay * 2, 2000ms);
    }
    co_return reconnected;
  }

  /// XADDs the task, retrying while the broker is unreachable; an error reply
  /// of the broker comes back as its text.
  asio::awaitable<std::optional<std::string>> send_task(const RedisArgs& args,
                                                        Clock::time_point give_up_at,
                                                        const asio::cancellation_state& state) {
    for (;;) {
      co_await ensure_connected(*commands_, commands_connecting_, state);
      try {
        RedisReply reply = co_await commands_->command(args);
        if (!reply.is_error()) co_return std::nullopt;
        // A broker that restarted answers LOADING until its data is back (and a
        // busy or failing-over one BUSY, TRYAGAIN, MASTERDOWN): wait, not refuse.
        if (!reply.is_transient_error() || Clock::now() >= give_up_at) co_return reply.str;
      } catch (const RedisError&) {
        if (Clock::now() >= give_up_at) co_return std::string("the broker is unreachable");
        continue;
      }
      asio::steady_timer timer(strand_, 50ms);
      co_await timer.async_wait(asio::as_tuple(use_awaitable));
    }
  }

  /// Reads this host's results stream until the node is closed and every
  /// request is answered.
  asio::awaitable<void> read_results() {
    auto state = co_await asio::this_coro::cancellation_state;
    std::string last_id = "0-0";
    auto refreshed = Clock::now();
    bool first = true;
    while (!(closed_ && pending_.empty()) && !cancelled(state)) {
      try {
        if (co_await ensure_connected(*reader_, reader_connecting_, state)) {
          if (!first) {
            co_await recreate_results_stream();
            // The broker may have restarted and lost entries: send again what
            // is unanswered (a duplicate answer is dropped).
            for (auto& [request, waiter] : pending_) {
              waiter->resend = true;
              waiter->timer.cancel();
            }
          }
          first = false;
        }
        if (Clock::now() - refreshed > 5s) {
          refreshed = Clock::now();
          RedisArgs expire{"PEXPIRE", results_key_, ttl_text()};
          RedisReply alive = co_await reader_->command(std::move(expire));
          if (alive.integer == 0) co_await recreate_results_stream();
        }
        RedisArgs read{"XREAD", "COUNT", "1024", "BLOCK", "100", "STREAMS", results_key_, last_id};
        RedisReply reply = co_await reader_->command(std::move(read));
        if (reply.type != RedisReply::Type::array || reply.elements.empty()) continue;
        RedisArgs done{"XDEL", results_key_};
        for (RedisReply& stream : reply.elements) {
          if (stream.elements.size() < 2) continue;
          for (RedisReply& entry : stream.elements[1].elements) {
            if (entry.elements.size() < 2) continue;
            last_id = entry.elements[0].str;
            done.push_back(last_id);
            deliver(entry.elements[1]);
          }
        }
        if (done.size() > 2) co_await reader_->command(std::move(done));
      } catch (const RedisError&) {
        // The connection broke: ensure_connected reconnects.
      }
    }
    if (closed_) {
      try {
        if (!commands_->connected()) co_await commands_->connect();
        RedisArgs del{"DEL", results_key_};
        co_await commands_->command(del);
      } catch (const RedisError&) {
      }
    }
    reader_->close();
    commands_->close();
  }

  // (Arguments are built outside each co_await: GCC 12 cannot keep an
  // initializer list's array across a suspension.)
  asio::awaitable<void> recreate_results_stream() {
    RedisArgs create{"XADD", results_key_, "MAXLEN", "0", "*", "_", "_"};
    co_await reader_->command(std::move(create));
    RedisArgs expire{"PEXPIRE", results_key_, ttl_text()};
    co_await reader_->command(std::move(expire));
  }

  void deliver(RedisReply& fields) {
    RemoteResult result;
    try {
      result = decode_result(fields);
    } catch (const std::exception& e) {
      log(spdlog::level::warn, {.node = node_.id}, "dropped a malformed result entry: {}",
          e.what());
      return;
    }
    if (std::find(stats_.workers.begin(), stats_.workers.end(), result.consumer) ==
        stats_.workers.end()) {
      stats_.workers.push_back(result.consumer);
    }
    if (result.deliveries > 1) ++stats_.redelivered;
    if (result.claimed) ++stats_.claimed;
    if (result.final) ++stats_.dead_lettered;
    auto it = pending_.find(result.request);
    if (it == pending_.end() || it->second->result) {
      ++stats_.duplicates;
      return;
    }
    it->second->result = std::move(result);
    it->second->timer.cancel();
  }

  const NodeSpec& node_;
  Strand strand_;
  RemoteKeys keys_;
  std::chrono::milliseconds start_timeout_;
  std::string results_key_;
  BrokerAddress address_;
  std::optional<AsyncRedis> commands_, reader_;
  bool commands_connecting_ = false, reader_connecting_ = false;
  bool warned_ = false;
  bool closed_ = false;
  bool reader_done_ = false;  // closed by wake_reader_if_done
  std::uint64_t next_request_ = 1;
  std::unordered_map<std::uint64_t, Waiter*> pending_;
  RemoteStats stats_;
};

}  // namespace

std::unique_ptr<StepRunner> make_remote_runner(const RunnerContext& context) {
  return std::make_unique<RemoteRunner>(context);
}

}  // namespace plumber::detail
