// The shared-memory ring of worker processes, on its own: records in order,
// across many laps of a small ring, and between two threads (which
// ThreadSanitizer checks: the ring's publication is its only synchronisation).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <random>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "workers/shm.hpp"

using plumber::detail::ByteRing;
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
