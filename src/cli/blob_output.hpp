#pragma once
/// What `plumber run` does with the blobs of its output values: with
/// --blobs-dir DIR it writes each to a file and prints its path; without, it
/// counts them and says so at the end. Never dropped silently.
#include <cstdint>
#include <string>

#include "plumber/json.hpp"
#include "plumber/pipeline.hpp"

namespace plumber::cli {

class BlobOutput {
 public:
  /// `dir` empty: blobs are not written. Creates `dir` when missing.
  explicit BlobOutput(std::string dir);

  /// For an output value with blobs: writes them (with a directory) and returns
  /// what the output line shows of them: their paths, or their sizes.
  /// Throws std::runtime_error when a file cannot be written.
  json take(const OutputRecord& record);
  bool writes() const noexcept { return !dir_.empty(); }
  /// One line on stderr when blobs were left unwritten.
  void report() const;

 private:
  std::string dir_;
  std::uint64_t values_ = 0, blobs_ = 0, bytes_ = 0;
};

}  // namespace plumber::cli
