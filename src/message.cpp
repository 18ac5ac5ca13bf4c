#include "plumber/message.hpp"

namespace plumber {

Blob::Blob(std::vector<std::byte> bytes) {
  auto owned = std::make_shared<const std::vector<std::byte>>(std::move(bytes));
  bytes_ = std::span<const std::byte>(owned->data(), owned->size());
  owner_ = std::move(owned);
}

}  // namespace plumber
