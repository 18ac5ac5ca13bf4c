// `plumber worker`: a consumer of a remote node's task streams. Each process
// reads batches with XREADGROUP (its own pending entries first, after a
// reconnect), runs the step, and stores the results in the host's results
// stream and acknowledges the task in one script (results before the
// acknowledgement, atomically). Once a second it renews its registration and
// claims the entries other consumers left idle longer than claim_idle_ms
// (XAUTOCLAIM); an entry delivered more than max_deliveries times becomes a
// dead letter and an error record.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "plumber/error.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/registry.hpp"
#include "plumber/remote_worker.hpp"
#include "remote/redis_client.hpp"
#include "remote/remote_codec.hpp"

namespace plumber {
namespace detail {
namespace {

using namespace std::chrono_literals;

std::atomic<bool> stop_requested{false};

extern "C" void on_stop_signal(int) {
  stop_requested.store(true);
}

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGTERM, &action, nullptr);
  ::sigaction(SIGINT, &action, nullptr);
}

/// Stores the results (when the host's stream still exists), acknowledges and
/// deletes the task: one atomic step.
constexpr const char* kStoreScript = R"(
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3)) end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return 1
)";

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "host";
  return name;
}

class Consumer {
 public:
  Consumer(const NodeSpec& node, const RemoteKeys& keys, BrokerAddress address,
           std::unique_ptr<Transform> step)
      : node_(node),
        keys_(keys),
        address_(std::move(address)),
        step_(std::move(step)),
        name_(host_name() + ":" + std::to_string(::getpid())) {}

  int run() {
    while (!stop_requested) {
      try {
        if (!redis_) connect();
        if (Clock::now() - heartbeat_ > 1s) {
          register_self();
          claim_idle();
          if (++beats_ % 10 == 0) forget_dead_consumers();
        }
        read(">", 64 / std::max<std::size_t>(1, node_.batch_size) + 1, 500);
      } catch (const RedisError& e) {
        redis_.reset();
        std::cerr << "plumber worker " << name_ << ": " << e.what() << "; reconnecting\n";
        std::this_thread::sleep_for(backoff_);
        backoff_ = std::min<std::chrono::milliseconds>(backoff_ * 2, 2000ms);
      }
    }
    leave();
    return 0;
  }

 private:
  void connect() {
    redis_.emplace(address_, 2000ms);
    redis_->set_timeout(5000ms);  // longer than XREADGROUP's BLOCK
    for (const auto& stream : keys_.tasks) {
      RedisReply r = redis_->command({"XGROUP", "CREATE", stream, keys_.group, "0", "MKSTREAM"});
      if (r.is_error() && r.str.rfind("BUSYGROUP", 0) != 0) throw RedisError(r.str);
    }
    backoff_ = 100ms;
    // Entries delivered to this consumer before the connection broke.
    read("0", 1000, -1);
    register_self();
  }

  void register_self() {
    heartbeat_ = Clock::now();
    redis_->append({"SET", keys_.worker(name_), host_name() + " pid " + std::to_string(::getpid()),
                    "PX", "10000"});
    redis_->append({"SADD", keys_.workers, name_});
    redis_->read();
    redis_->read();
  }

  /// XREADGROUP from every lane, highest first; `id` ">" for new entries, "0"
  /// for this consumer's pending ones. block < 0: no BLOCK.
  void read(const char* id, std::size_t count, int block) {
    RedisArgs args{"XREADGROUP", "GROUP", keys_.group, name_, "COUNT", std::to_string(count)};
    if (block >= 0) {
      args.push_back("BLOCK");
      args.push_back(std::to_string(block));
    }
    args.push_back("STREAMS");
    for (auto it = keys_.tasks.rbegin(); it != keys_.tasks.rend(); ++it)
      args.push_back(*it);
    for (std::size_t i = 0; i < keys_.tasks.size(); ++i)
      args.push_back(id);
    RedisReply reply = redis_->command(args);
    if (reply.is_error()) throw RedisError(reply.str);
    if (reply.type != RedisReply::Type::array) return;
    std::size_t stored = 0;
    for (RedisReply& stream : reply.elements) {
      if (stream.elements.size() < 2) continue;
      const std::string& key = stream.elements[0].str;
      for (RedisReply& entry : stream.elements[1].elements) {
        if (entry.elements.size() < 2 || entry.elements[1].is_nil()) continue;
        if (handle(key, entry.elements[0].str, entry.elements[1], 1)) ++stored;
      }
    }
    for (; stored > 0; --stored)
      redis_->read();
  }

  /// Runs one task entry and appends its store script: true when the caller
  /// is to read its reply (false: a malformed entry, dead-lettered at once).
  bool handle(const std::string& stream, const std::string& id, RedisReply& fields,
              std::uint64_t deliveries) {
    RemoteTask task;
    try {
      task = decode_task(fields);
    } catch (const std::exception& e) {
      dead_letter(stream, id, {}, std::string("malformed task entry: ") + e.what(), deliveries);
      return false;
    }
    std::vector<Message> results;
    std::string failure;
    try {
      step_->process(task.batch, results);
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "unknown exception";
    }
    RedisArgs args{"EVAL", kStoreScript, "2", task.reply, stream, keys_.group, id};
    if (failure.empty()) {
      encode_results(args, task.request, name_, deliveries, results);
    } else {
      encode_failure(args, task.request, name_, deliveries, failure, false);
    }
    redis_->append(args);
    return true;
  }

  /// Moves an entry to the dead-letter stream and answers its host with an error.
  void dead_letter(const std::string& stream, const std::string& id, const RedisReply& fields,
                   const std::string& reason, std::uint64_t deliveries) {
    RedisArgs dead{"XADD",
                   keys_.dead,
                   "*",
                   "stream",
                   stream,
                   "entry",
                   id,
                   "reason",
                   reason,
                   "deliveries",
                   std::to_string(deliveries)};
    std::string reply, request;
    for (std::size_t i = 0; i + 1 < fields.elements.size(); i += 2) {
      dead.push_back(fields.elements[i].str);
      dead.push_back(fields.elements[i + 1].str);
      if (fields.elements[i].str == "h") reply = fields.elements[i + 1].str;
      if (fields.elements[i].str == "r") request = fields.elements[i + 1].str;
    }
    redis_->append(dead);
    RedisArgs store{"EVAL", kStoreScript, "2", reply.empty() ? keys_.dead : reply,
                    stream, keys_.group,  id};
    if (!reply.empty()) {
      encode_failure(store, std::stoull(request.empty() ? "0" : request), name_, deliveries, reason,
                     true);
    } else {
      store.push_back("_");  // a malformed entry: nobody to answer
      store.push_back("_");
    }
    redis_->append(store);
    redis_->read();
    redis_->read();
  }

  /// Removes consumers that died (no registration) with nothing pending, so
  /// that killed workers do not accumulate in the group.
  void forget_dead_consumers() {
    for (const auto& stream : keys_.tasks) {
      RedisReply consumers = redis_->command({"XINFO", "CONSUMERS", stream, keys_.group});
      if (consumers.type != RedisReply::Type::array) continue;
      for (const RedisReply& c : consumers.elements) {
        std::string name;
        long long pending = -1;
        for (std::size_t i = 0; i + 1 < c.elements.size(); i += 2) {
          if (c.elements[i].str == "name") name = c.elements[i + 1].str;
          if (c.elements[i].str == "pending") pending = c.elements[i + 1].integer;
        }
        if (name.empty() || name == name_ || pending != 0) continue;
        if (redis_->command({"EXISTS", keys_.worker(name)}).integer == 0)
          redis_->command({"XGROUP", "DELCONSUMER", stream, keys_.group, name});
      }
    }
  }

  /// Claims entries left idle by silent consumers; processes them, or
  /// dead-letters those delivered too often.
  void claim_idle() {
    const std::string idle = std::to_string(node_.remote->claim_idle.count());
    for (const auto& stream : keys_.tasks) {
      RedisReply claimed =
          redis_->command({"XAUTOCLAIM", stream, keys_.group, name_, idle, "0-0", "COUNT", "100"});
      if (claimed.is_error() || claimed.elements.size() < 2) continue;
      std::size_t stored = 0;
      for (RedisReply& entry : claimed.elements[1].elements) {
        if (entry.elements.size() < 2 || entry.elements[1].is_nil()) continue;
        const std::string& id = entry.elements[0].str;
        RedisReply info = redis_->command({"XPENDING", stream, keys_.group, id, id, "1"});
        std::uint64_t deliveries = 2;
        if (!info.elements.empty() && info.elements[0].elements.size() >= 4)
          deliveries = static_cast<std::uint64_t>(info.elements[0].elements[3].integer);
        if (deliveries > node_.remote->max_deliveries) {
          dead_letter(stream, id, entry.elements[1],
                      "delivered " + std::to_string(deliveries) +
                          " times without a result (max_deliveries " +
                          std::to_string(node_.remote->max_deliveries) +
                          "): its workers died or hung",
                      deliveries);
          continue;
        }
        if (handle(stream, id, entry.elements[1], deliveries)) ++stored;
      }
      for (; stored > 0; --stored)
        redis_->read();
    }
  }

  /// Leaves the group when nothing is pending for this consumer (pending
  /// entries stay claimable by the others).
  void leave() {
    try {
      if (!redis_) redis_.emplace(address_, 2000ms);
      for (const auto& stream : keys_.tasks) {
        RedisReply pending =
            redis_->command({"XPENDING", stream, keys_.group, "-", "+", "1", name_});
        if (pending.type == RedisReply::Type::array && pending.elements.empty())
          redis_->command({"XGROUP", "DELCONSUMER", stream, keys_.group, name_});
      }
      redis_->command({"DEL", keys_.worker(name_)});
      redis_->command({"SREM", keys_.workers, name_});
    } catch (const RedisError&) {
      // The broker is gone: the registration expires by itself.
    }
  }

  const NodeSpec& node_;
  const RemoteKeys& keys_;
  BrokerAddress address_;
  std::unique_ptr<Transform> step_;
  std::string name_;
  std::optional<RedisClient> redis_;
  Clock::time_point heartbeat_{};
  std::uint64_t beats_ = 0;
  std::chrono::milliseconds backoff_{100};
};

/// One consumer process: its step starts (on_start) before it joins.
int consume(const NodeSpec& node, const RemoteKeys& keys, const BrokerAddress& address) {
  std::unique_ptr<Transform> step;
  try {
    step = node.info->make_transform(node.params);
    step->on_start();
  } catch (const std::exception& e) {
    std::cerr << "plumber worker: node \"" << node.id
              << "\": the step could not start: " << e.what() << '\n';
    return 1;
  }
  if (step->is_async()) {
    std::cerr << "plumber worker: node \"" << node.id
              << "\": asynchronous steps are not supported by remote workers yet\n";
    return 1;
  }
  return Consumer(node, keys, address, std::move(step)).run();
}

/// `--procs N`: N consumer processes, restarted when they die, stopped together.
int supervise(std::size_t procs, const std::function<int()>& child) {
  std::map<pid_t, std::size_t> children;
  auto start = [&]() {
    const pid_t pid = ::fork();
    if (pid == 0) ::_exit(child());
    if (pid > 0) children.emplace(pid, 0);
  };
  for (std::size_t i = 0; i < procs; ++i)
    start();
  int code = 0;
  while (!children.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) {
        if (stop_requested)
          for (auto& [p, _] : children)
            ::kill(p, SIGTERM);
        continue;
      }
      break;
    }
    children.erase(pid);
    if (!stop_requested && !(WIFEXITED(status) && WEXITSTATUS(status) == 1)) {
      std::cerr << "plumber worker: consumer process " << pid << " ended; starting another\n";
      std::this_thread::sleep_for(200ms);
      start();
    } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
      code = WEXITSTATUS(status);
    }
  }
  return code;
}

}  // namespace
}  // namespace detail

int run_remote_worker(const RemoteWorkerOptions& options, const Registry& registry) {
  using namespace detail;
  GraphSpec graph;
  try {
    graph = load_graph_file(options.graph, registry);
  } catch (const GraphError& e) {
    std::cerr << e.what() << '\n';
    return 2;
  }
  const auto index = graph.find(options.node);
  if (!index) {
    std::cerr << "plumber worker: " << options.graph << " has no node \"" << options.node << "\"\n";
    return 2;
  }
  const NodeSpec& node = graph.nodes[*index];
  if (!node.remote || !node.info) {
    std::cerr << "plumber worker: node \"" << options.node
              << "\" is not remote (give it \"remote\": true or {...})\n";
    return 2;
  }
  std::string url = !options.broker.empty() ? options.broker : node.remote->broker;
  if (url.empty())
    if (const char* env = std::getenv("PLUMBER_BROKER")) url = env;
  BrokerAddress address;
  try {
    if (url.empty()) throw std::invalid_argument("no broker: give --broker or PLUMBER_BROKER");
    address = parse_broker_url(url);
  } catch (const std::invalid_argument& e) {
    std::cerr << "plumber worker: " << e.what() << '\n';
    return 2;
  }
  const RemoteKeys keys(graph.name, node.id, graph.settings.priorities);
  install_stop_handlers();
  if (options.procs <= 1) return consume(node, keys, address);
  return supervise(options.procs, [&] { return consume(node, keys, address); });
}

}  // namespace plumber
