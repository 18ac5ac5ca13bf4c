// The shared-memory ring of worker processes, on its own: records in order,
// across many laps of a small ring, and between two threads (which
// ThreadSanitizer checks: the ring's publication is its only synchronisation);
// the fields of the records it carries; and the clock a worker times batches with.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <random>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "workers/busy_clock.hpp"
#include "workers/protocol.hpp"
#include "workers/shm.hpp"

using plumber::detail::BusyClock;
using plumber::detail::ByteRing;
using plumber::detail::Decoder;
using plumber::detail::Encoder;
using plumber::detail::RingIndices;

namespace {

/// A ring of `capacity` bytes in private memory, with both ends.
struct TestRing {
  explicit TestRing(std::size_t capacity) : words(capacity / 8) {
    indices.key = 0x9e3779b97f4a7c15;
    auto* data = reinterpret_cast<std::byte*>(words.data());
    producer = ByteRing(&indices, data, capacity);
    consumer = ByteRing(&indices, data, capacity);
  }
  RingIndices indices;
  std::vector<std::uint64_t> words;
  ByteRing producer, consumer;
};

/// `size` bytes that say `sequence`: its 8 bytes, repeated.
std::vector<std::byte> record_of(std::uint64_t sequence, std::size_t size) {
  std::vector<std::byte> record(size);
  for (std::size_t i = 0; i < size; ++i)
    record[i] = static_cast<std::byte>(sequence >> (8 * (i % 8)));
  return record;
}

bool equal(std::span<const std::byte> got, const std::vector<std::byte>& want) {
  return got.size() == want.size() && std::memcmp(got.data(), want.data(), want.size()) == 0;
}

}  // namespace

TEST_CASE("Workers.RingKeepsOrderAcrossLaps") {
  TestRing ring(256);
  CHECK(ring.consumer.empty());
  CHECK(ring.consumer.peek().empty());
  std::mt19937 random(7);
  std::deque<std::vector<std::byte>> in_ring;
  std::uint64_t sequence = 0, received = 0;
  for (int round = 0; round < 5000; ++round) {
    // Fill until full, with sizes from 1 byte to the largest, then take some out.
    for (;;) {
      std::vector<std::byte> record =
          record_of(sequence, 1 + random() % ring.producer.max_record());
      if (!ring.producer.try_push(record)) break;
      in_ring.push_back(std::move(record));
      ++sequence;
    }
    REQUIRE_FALSE(in_ring.empty());
    for (std::size_t take = 1 + random() % in_ring.size(); take > 0; --take) {
      REQUIRE_FALSE(ring.consumer.empty());
      const std::span<const std::byte> got = ring.consumer.peek();
      REQUIRE(equal(got, in_ring.front()));
      ring.consumer.pop();
      in_ring.pop_front();
      ++received;
    }
  }
  while (!in_ring.empty()) {
    REQUIRE(equal(ring.consumer.peek(), in_ring.front()));
    ring.consumer.pop();
    in_ring.pop_front();
    ++received;
  }
  CHECK(ring.consumer.peek().empty());
  CHECK(ring.consumer.empty());
  // Many laps: old records were overwritten at every offset, and none was
  // taken for a new one.
  CHECK(ring.indices.head.load() / 256 > 500);
  CHECK(received == sequence);
}

TEST_CASE("Workers.RingBetweenTwoThreads") {
  TestRing ring(1024);
  constexpr std::uint64_t kRecords = 100000;
  std::thread producer([&] {
    std::mt19937 random(11);
    for (std::uint64_t i = 0; i < kRecords; ++i) {
      const std::vector<std::byte> record = record_of(i, 8 + random() % 200);
      while (!ring.producer.try_push(record))
        std::this_thread::yield();
    }
  });
  std::mt19937 random(11);
  std::uint64_t mismatches = 0;
  for (std::uint64_t i = 0; i < kRecords; ++i) {
    std::span<const std::byte> got;
    while ((got = ring.consumer.peek()).empty())
      std::this_thread::yield();
    if (!equal(got, record_of(i, 8 + random() % 200))) ++mismatches;
    ring.consumer.pop();
  }
  producer.join();
  CHECK(mismatches == 0);
  CHECK(ring.consumer.empty());
}

TEST_CASE("Workers.RecordFieldsRoundTrip") {
  const std::vector<std::uint64_t> numbers = {0,     1,     127,        128,
                                              16383, 16384, 1ull << 32, ~std::uint64_t{0}};
  // Values whose CBOR is just under, at and well over the one-byte size.
  const std::vector<plumber::json> values = {
      nullptr,
      7,
      -3,
      2.5,
      "short",
      std::string(120, 'a'),
      std::string(126, 'b'),
      std::string(200, 'c'),
      std::string(20000, 'd'),
      plumber::json{{"k", std::string(300, 'e')}, {"n", {1, 2, 3}}}};
  std::vector<std::uint8_t> bytes;
  Encoder e(bytes);
  for (std::uint64_t n : numbers)
    e.varint(n);
  for (const plumber::json& v : values)
    e.value(v);
  e.text(std::string(130, 'x'));
  e.u8(9);
  Decoder d(std::as_bytes(std::span<const std::uint8_t>(bytes)));
  for (std::uint64_t n : numbers)
    CHECK(d.varint() == n);
  for (const plumber::json& v : values)
    CHECK(d.value() == v);
  CHECK(d.text() == std::string(130, 'x'));
  CHECK(d.u8() == 9);
  CHECK(d.remaining() == 0);
}

TEST_CASE("Workers.RecordFieldsRejectWhatIsCut") {
  std::vector<std::uint8_t> bytes;
  const auto decoder = [&](std::vector<std::uint8_t> record) {
    bytes = std::move(record);
    return Decoder(std::as_bytes(std::span<const std::uint8_t>(bytes)));
  };
  // A varint cut short, and an 11-byte one.
  CHECK_THROWS_WITH(decoder({0x80, 0x80}).varint(), "truncated worker record");
  CHECK_THROWS_WITH(decoder(std::vector<std::uint8_t>(11, 0xff)).varint(),
                    "worker record: varint longer than 10 bytes");
  // A value whose size runs past the record, and a count larger than it can hold.
  CHECK_THROWS_WITH(decoder({0x05, 0x01}).value(), "truncated worker record");
  CHECK_THROWS_WITH(decoder({0x7f, 0, 0, 0, 0}).count(4), "worker record: count past its end");
}

TEST_CASE("Workers.BusyClockReadsTheMonotonicClock") {
  BusyClock clock;
  // Uncalibrated, it is the clock itself.
  const std::uint64_t before = plumber::detail::monotonic_ns();
  const std::uint64_t first = clock.now();
  CHECK(first >= before);
  CHECK(first <= plumber::detail::monotonic_ns());
  // Calibrated over a few milliseconds (where there is a counter), it still
  // tells the clock's time: within 1 ms here, a bound on the conversion, not on
  // how long anything takes.
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  clock.calibrate();
#if defined(__x86_64__)
  CHECK(clock.calibrated());  // from now on it reads the counter
#endif
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const std::uint64_t truth = plumber::detail::monotonic_ns();
  const std::uint64_t told = clock.now();
  const std::uint64_t gap = told > truth ? told - truth : truth - told;
  CHECK(gap < 1'000'000);
  std::uint64_t last = told;
  for (int i = 0; i < 1000; ++i) {  // and it never goes back
    const std::uint64_t next = clock.now();
    CHECK(next >= last);
    last = next;
  }
}
