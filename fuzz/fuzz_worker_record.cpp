// libFuzzer target: a record in a worker's results ring, decoded field by
// field as the parent decodes it (WorkerPool::handle_record, without the
// arena: blob offsets are read, not followed), and a request record as a
// worker decodes it.
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>

#include "json_parse.hpp"
#include "workers/protocol.hpp"

namespace {

using plumber::detail::BlobMode;
using plumber::detail::Decoder;
using plumber::detail::kMinMessageBytes;
using plumber::detail::RecordType;

void decode(std::span<const std::byte> bytes) {
  Decoder d(bytes);
  const auto type = static_cast<RecordType>(d.u8());
  switch (type) {
    case RecordType::ready:
      d.u64();
      return;
    case RecordType::start_failed:
      (void)d.text();
      return;
    case RecordType::failure:
      d.varint(), d.u64(), d.varint();
      (void)d.text();
      return;
    case RecordType::result: {
      d.varint(), d.u64(), d.varint(), d.varint();
      const std::uint32_t count = d.count(kMinMessageBytes);
      for (std::uint32_t i = 0; i < count; ++i) {
        d.varint();
        d.u8();
        (void)d.value();
        const std::uint32_t blobs = d.count(1 + 8 + 8);
        for (std::uint32_t b = 0; b < blobs; ++b) {
          const auto mode = static_cast<BlobMode>(d.u8());
          d.u64(), d.u64();
          if (mode == BlobMode::transferred) d.u64(), d.u64();
        }
      }
      return;
    }
    case RecordType::request: {
      d.varint();
      const std::uint32_t count = d.count(kMinMessageBytes);
      for (std::uint32_t i = 0; i < count; ++i) {
        d.varint();
        d.u8();
        (void)d.value();
        const std::uint32_t blobs = d.count(8 + 8);
        for (std::uint32_t b = 0; b < blobs; ++b)
          d.u64(), d.u64();
      }
      return;
    }
    default:
      throw std::runtime_error("unexpected record type");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    decode(std::span(reinterpret_cast<const std::byte*>(data), size));
  } catch (const std::runtime_error&) {
    // Truncated, a bad count, bad CBOR: the parent kills such a worker.
  }
  return 0;
}
