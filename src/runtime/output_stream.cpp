#include "runtime/output_stream.hpp"

#include <tuple>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace plumber::detail {

OutputStream::OutputStream(const Strand& strand, OutputStreamOptions options)
    : options_(options), taken_(strand, Clock::time_point::max()) {
  if (options_.capacity == 0) options_.capacity = 1;
}

bool OutputStream::try_push_value(OutputRecord& record) {
  if (full()) {
    if (options_.overflow == OutputOverflow::block) return false;
    dropped_.add();
    return true;
  }
  records_.push_back(std::move(record));
  hand_over();
  return true;
}

void OutputStream::push(OutputRecord&& record) {
  records_.push_back(std::move(record));
  hand_over();
}

asio::awaitable<void> OutputStream::wait_taken() {
  const std::tuple<error_code> woken =
      co_await taken_.async_wait(asio::as_tuple(asio::use_awaitable));
  (void)woken;  // woken by cancel(): a record was taken, or the pipeline is cancelled
}

void OutputStream::finish() {
  finished_ = true;
  hand_over();
}

void OutputStream::receive(Handler handler) {
  consumer_.emplace(std::move(handler));
  hand_over();
}

void OutputStream::hand_over() {
  if (!consumer_) return;
  if (records_.empty() && !finished_) return;
  Handler handler(std::move(*consumer_));
  consumer_.reset();
  if (records_.empty()) {
    std::move(handler)(error_code(asio::error::eof), OutputRecord{});
    return;
  }
  OutputRecord record = std::move(records_.front());
  records_.pop_front();
  taken_.cancel();  // a sink waiting for room may go on
  std::move(handler)(error_code{}, std::move(record));
}

}  // namespace plumber::detail
