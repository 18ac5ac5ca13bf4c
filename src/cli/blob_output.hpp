#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "plumber/blob.hpp"
#include "plumber/json.hpp"

namespace plumber::cli {

/// What `plumber run` does with the blobs of its outputs: with --blobs-dir,
/// each is written to DIR/ID-NODE-K.bin (the message's id, the sink that
/// emitted it, K counting the output's blobs from 0: unique in a run) and
/// described as {"path", "size"}; without, it is described as {"size",
/// "sha256"} and counted, so that the run can say what it did not write. Called
/// from the pipeline's strand only.
class BlobOutput {
 public:
  explicit BlobOutput(std::string directory) : directory_(std::move(directory)) {}

  /// The blobs' descriptions, in order. A blob that cannot be written is
  /// described with an "error" instead of a path.
  json describe(std::uint64_t id, const std::string& node, const std::vector<Blob>& blobs);
  /// Blobs described but not written (no --blobs-dir, or a failed write).
  std::uint64_t unwritten() const noexcept { return unwritten_; }

 private:
  std::string directory_;
  std::uint64_t unwritten_ = 0;
};

}  // namespace plumber::cli
