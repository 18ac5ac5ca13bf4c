#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "plumber/pipeline.hpp"
#include "runtime/packet.hpp"

namespace plumber::detail {

/// The pipeline's outputs as a bounded stream (Pipeline::stream_outputs): sinks
/// put records in, one consumer takes them out with async_receive_output. When
/// it is full, value records wait (policy `block`: the sinks suspend and back
/// pressure holds the graph still) or are dropped and counted (`drop`). Error
/// and cancellation records are always taken: a source waits for room after
/// one, so they too stay bounded. Strand-only.
class OutputStream {
 public:
  using Handler = asio::any_completion_handler<OutputSignature>;

  OutputStream(const Strand& strand, OutputStreamOptions options);

  bool full() const noexcept { return records_.size() >= options_.capacity; }
  bool blocks() const noexcept { return options_.overflow == OutputOverflow::block; }
  /// Takes a value record; false (nothing taken) when full under `block`.
  bool try_push_value(OutputRecord& record);
  /// Takes an error or cancellation record.
  void push(OutputRecord&& record);
  /// Completes after a record was taken out (or at once): re-check full().
  asio::awaitable<void> wait_taken();
  /// No more records: the consumer gets asio::error::eof after the last one.
  void finish();
  /// The consumer asks for the next record (one request at a time).
  void receive(Handler handler);
  std::uint64_t dropped() const noexcept { return dropped_.get(); }

 private:
  void hand_over();

  OutputStreamOptions options_;
  std::deque<OutputRecord> records_;
  /// Emplaced, never assigned: Boost 1.81's any_completion_handler move
  /// assignment wraps the handler in itself.
  std::optional<Handler> consumer_;
  /// Waiters never re-arm it (that would cancel the others' waits): its
  /// expiry stays at max, and cancel() wakes every waiter.
  asio::steady_timer taken_;
  bool finished_ = false;
  Counter dropped_;
};

}  // namespace plumber::detail
