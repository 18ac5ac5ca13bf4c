#include "line_reader.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace plumber::detail {

LineReader::LineReader(int fd, std::size_t block_size)
    : fd_(fd), block_size_(block_size), buffer_(block_size) {}

bool LineReader::fill() {
  // The unfinished line moves to the front; a line longer than the buffer
  // doubles it, so a read always has at least a block of room.
  if (begin_ > 0) {
    std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (buffer_.size() - end_ < block_size_)
    buffer_.resize(std::max(buffer_.size() * 2, end_ + block_size_));
  for (;;) {
    const ssize_t n = ::read(fd_, buffer_.data() + end_, buffer_.size() - end_);
    if (n > 0) {
      end_ += static_cast<std::size_t>(n);
      bytes_read_ += static_cast<std::uint64_t>(n);
      return true;
    }
    if (n == 0) return false;
    if (errno != EINTR) throw std::system_error(errno, std::generic_category(), "read");
  }
}

bool LineReader::next_line(std::string_view& line, bool at_end) {
  if (begin_ == end_) return false;
  const char* start = buffer_.data() + begin_;
  const std::size_t left = end_ - begin_;
  const void* newline = std::memchr(start + scan_, '\n', left - scan_);
  if (newline == nullptr) {
    if (!at_end) {
      scan_ = left;  // the next read need not search these bytes again
      return false;
    }
    line = std::string_view(start, left);  // the last line has no '\n'
    begin_ = end_;
    scan_ = 0;
    return true;
  }
  const auto length = static_cast<std::size_t>(static_cast<const char*>(newline) - start);
  line = std::string_view(start, length);
  begin_ += length + 1;
  scan_ = 0;
  return true;
}

}  // namespace plumber::detail
