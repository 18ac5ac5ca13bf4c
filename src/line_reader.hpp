#pragma once
/// Reads a file descriptor in large blocks and cuts what it reads into lines:
/// one read() a block, not one a line, and no copy of a line that lies whole
/// in the block.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace plumber::detail {

class LineReader {
 public:
  /// Reads `fd` (not owned, not closed) in blocks of `block_size` bytes. A line
  /// longer than a block grows the buffer to hold it.
  explicit LineReader(int fd, std::size_t block_size = std::size_t{1} << 20);

  /// One read(): calls `on_line(line)` for each line it completes, without its
  /// '\n' (a '\r' before it is kept: JSON reads it as white space), the last
  /// line of the input too when it has no '\n'. The view is valid during the
  /// call only. Returns false at the end of the input; throws
  /// std::system_error when read() fails (EINTR is retried).
  template <class OnLine>
  bool read_some(OnLine&& on_line) {
    const bool more = fill();
    for (std::string_view line; next_line(line, !more);)
      on_line(line);
    return more;
  }

  /// Bytes read so far.
  std::uint64_t bytes_read() const noexcept { return bytes_read_; }

 private:
  /// Moves the unfinished line to the front, then reads once; false at end of input.
  bool fill();
  /// The next complete line of the buffer; at the end of the input, what is left too.
  bool next_line(std::string_view& line, bool at_end);

  int fd_;
  std::size_t block_size_;
  std::vector<char> buffer_;
  std::size_t begin_ = 0;  ///< first byte not yet handed out
  std::size_t end_ = 0;    ///< one past the last byte read
  std::size_t scan_ = 0;   ///< bytes from begin_ known to hold no '\n'
  std::uint64_t bytes_read_ = 0;
};

}  // namespace plumber::detail
