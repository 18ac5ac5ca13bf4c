#pragma once
#include <cstddef>
#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace plumber {

/// Immutable, reference-counted bytes attached to a message. Copying a Blob
/// shares the bytes; fan-out never copies them.
class Blob {
 public:
  Blob() = default;
  /// Takes ownership of `bytes`.
  explicit Blob(std::vector<std::byte> bytes);
  /// Views bytes kept alive by `owner` (shared memory, a mapped file, ...).
  Blob(std::shared_ptr<const void> owner, std::span<const std::byte> bytes)
      : owner_(std::move(owner)), bytes_(bytes) {}

  std::span<const std::byte> bytes() const noexcept { return bytes_; }
  const std::byte* data() const noexcept { return bytes_.data(); }
  std::size_t size() const noexcept { return bytes_.size(); }
  /// Part of these bytes, sharing their owner (no copy).
  Blob slice(std::size_t offset, std::size_t size) const {
    return Blob(owner_, bytes_.subspan(offset, size));
  }
  /// How many Blobs share these bytes (for tests that prove nothing was copied).
  long use_count() const noexcept { return owner_.use_count(); }

 private:
  std::shared_ptr<const void> owner_;
  std::span<const std::byte> bytes_;
};

}  // namespace plumber
