#include "sha256.hpp"

#include <openssl/evp.h>

#include <stdexcept>

namespace plumber::detail {

std::string sha256_hex(const void* data, std::size_t size) {
  // OpenSSL's libcrypto, as Boost 1.81 has no SHA-256.
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(data, size, digest, &length, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("sha256: digest failed");
  }
  static constexpr char hex[] = "0123456789abcdef";
  std::string text;
  for (unsigned int i = 0; i < length; ++i) {
    text += hex[digest[i] >> 4];
    text += hex[digest[i] & 15];
  }
  return text;
}

}  // namespace plumber::detail
