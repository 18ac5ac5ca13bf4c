#pragma once
/// Whether this test binary runs under AddressSanitizer or ThreadSanitizer:
/// tests that repeat a cycle to catch a leak (fds, segments, consumers) repeat
/// it fewer times there, where each spawned process costs seconds.
namespace plumber::test {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kUnderSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kUnderSanitizer = true;
#else
inline constexpr bool kUnderSanitizer = false;
#endif
#else
inline constexpr bool kUnderSanitizer = false;
#endif

/// A leak check's number of cycles: `full` in a plain build, a fifth under a sanitizer.
inline constexpr int cycles(int full) {
  return kUnderSanitizer ? full / 5 : full;
}

}  // namespace plumber::test
