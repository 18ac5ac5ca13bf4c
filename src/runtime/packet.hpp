#pragma once
#include <atomic>
#include <cstdint>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/strand.hpp>
#include <boost/system/error_code.hpp>

#include "plumber/message.hpp"

namespace plumber::detail {

namespace asio = boost::asio;
using error_code = boost::system::error_code;
using Strand = asio::strand<asio::any_io_executor>;

/// What travels in a processor's input channel besides data. Stream control is
/// in-band because channel::close() drops what is still buffered.
enum class PacketKind : std::uint8_t {
  data,     // a message
  dropped,  // the message with this id produced nothing upstream (lets zips forget it)
  end,      // one predecessor has finished
  flush,    // the batch timer of generation msg.id expired
};

struct Packet {
  PacketKind kind = PacketKind::data;
  std::uint16_t port = 0;  ///< which predecessor edge it came through
  Message msg;
  /// When a predecessor sent it into an input that measures waits.
  Clock::time_point sent_at{};
};

using PacketChannel = asio::experimental::channel<void(error_code, Packet)>;

/// A counter written by one thread (the strand) and read by any: relaxed
/// load+store compiles to a plain increment, unlike fetch_add.
class Counter {
 public:
  void add(std::uint64_t n = 1) noexcept {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void sub(std::uint64_t n = 1) noexcept {
    value_.store(value_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
  }
  std::uint64_t get() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

}  // namespace plumber::detail
