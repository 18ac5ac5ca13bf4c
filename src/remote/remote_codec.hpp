// Internal: the stream entries of a remote node, and their names.
//
// A task entry is one batch: r (request id), h (the host's results stream),
// n (messages), then per message k: i<k> id, v<k> JSON text, p<k> priority,
// d<k> milliseconds left before its deadline, t<k> trace, b<k> blob count and
// b<k>.<j> the blob's bytes (binary fields, never base64).
// A result entry: r, c (consumer that ran it), x (deliveries), a=1 when the
// entry was taken over with XAUTOCLAIM, E (count) and E<j> the ids of messages
// whose deadline passed while they waited at the broker (not run), then either n
// and the same per-message fields, or e (the step's error) and f=1 when not to
// be retried.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "plumber/message.hpp"
#include "remote/redis_reply.hpp"

namespace plumber::detail {

/// Keys of one remote node on its broker.
struct RemoteKeys {
  RemoteKeys(const std::string& graph, const std::string& node, std::size_t priorities);
  std::string prefix;              ///< plumber:{graph}:{node}
  std::vector<std::string> tasks;  ///< per priority lane, lane 0 first
  std::string group;               ///< the consumer group: the node's id
  std::string dead;                ///< dead-letter stream
  std::string runs;                ///< hash: entry id -> times a worker started its step
  std::string workers;             ///< set of live worker names
  std::string worker(const std::string& consumer) const { return prefix + ":worker:" + consumer; }
  std::string results(const std::string& host_instance) const {
    return prefix + ":results:" + host_instance;
  }
};

/// Appends the fields of a task entry to `args`.
void encode_task(RedisArgs& args, std::uint64_t request, const std::string& reply,
                 std::span<const Message> batch);

/// A decoded task entry.
struct RemoteTask {
  std::uint64_t request = 0;
  std::string reply;
  std::vector<Message> batch;
};
/// `fields`: the entry's [field, value, ...] array. Throws std::runtime_error.
/// Deadlines come back as `now` plus the time that was left when the entry
/// was sent, minus `queued` (how long it waited at the broker).
RemoteTask decode_task(RedisReply& fields,
                       std::chrono::milliseconds queued = std::chrono::milliseconds(0));

/// How the worker came to run a task entry, for the host's counters.
struct Delivery {
  std::uint64_t count = 1;  ///< times the entry was delivered (1: the first time)
  bool claimed = false;     ///< taken over from another consumer with XAUTOCLAIM
  /// Messages not run: their deadline passed while they waited at the broker.
  std::vector<std::uint64_t> expired{};
};

/// Appends the fields of a result entry.
void encode_results(RedisArgs& args, std::uint64_t request, const std::string& consumer,
                    const Delivery& delivery, std::span<const Message> results);
void encode_failure(RedisArgs& args, std::uint64_t request, const std::string& consumer,
                    const Delivery& delivery, const std::string& error, bool final);

/// A decoded result entry.
struct RemoteResult {
  std::uint64_t request = 0;
  std::string consumer;
  std::uint64_t deliveries = 1;
  bool claimed = false;
  std::vector<std::uint64_t> expired;
  std::vector<Message> messages;
  std::optional<std::string> error;
  bool final = false;
};
RemoteResult decode_result(RedisReply& fields);

/// This machine's name, as consumers and hosts put it in their names ("host"
/// when it cannot be read).
std::string host_name();

}  // namespace plumber::detail
