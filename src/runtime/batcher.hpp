#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "runtime/input_port.hpp"
#include "runtime/packet.hpp"

namespace plumber::detail {

/// Gathers a node's messages into batches of `batch_size` (Aqueduct's
/// semantics): with a timeout of 0 a batch is what is queued, up to the size;
/// with a timeout, at most that long after its first message. The timer does
/// not call the node: it sends a `flush` packet into the node's own input, so
/// the node handles it in order with its messages. Strand-only.
class Batcher {
 public:
  Batcher(const Strand& strand, std::size_t batch_size, std::chrono::milliseconds timeout);

  /// Adds a message; true when the batch is full.
  bool add(Message&& message);
  bool empty() const noexcept { return batch_.empty(); }
  std::size_t size() const noexcept { return batch_.size(); }
  /// True when a partial batch waits for its timer (else it goes out when the
  /// input has nothing more queued).
  bool waits() const noexcept { return timer_.has_value(); }
  /// After the first message of a batch, when the batch waits: the coroutine
  /// that sends the flush packet to `input` at the timeout (spawn it).
  std::optional<asio::awaitable<void>> arm(InputPort& input);
  /// True when a flush packet of `generation` is for the batch now gathering.
  bool due(std::uint64_t generation) const noexcept {
    return generation == generation_ && !batch_.empty();
  }
  /// The batch, leaving this empty and its timer disarmed.
  std::vector<Message> take();
  /// The batch in place (the synchronous path computes it there), then clear().
  std::vector<Message>& current() noexcept { return batch_; }
  void clear();
  void cancel_timer();

 private:
  asio::awaitable<void> flush_at_timeout(InputPort& input, std::uint64_t generation);

  std::size_t batch_size_;
  std::chrono::milliseconds timeout_;
  std::vector<Message> batch_;
  std::optional<asio::steady_timer> timer_;
  std::uint64_t generation_ = 0;
};

}  // namespace plumber::detail
