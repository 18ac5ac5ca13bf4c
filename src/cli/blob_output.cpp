#include "cli/blob_output.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace plumber::cli {

BlobOutput::BlobOutput(std::string dir) : dir_(std::move(dir)) {
  if (dir_.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) throw std::runtime_error("cannot create " + dir_ + ": " + ec.message());
}

json BlobOutput::take(const OutputRecord& record) {
  json shown = json::array();
  ++values_;
  for (std::size_t k = 0; k < record.blobs.size(); ++k) {
    const Blob& blob = record.blobs[k];
    ++blobs_;
    bytes_ += blob.size();
    if (dir_.empty()) {
      shown.push_back({{"size", blob.size()}});
      continue;
    }
    const std::string path =
        (std::filesystem::path(dir_) /
         (std::to_string(record.id) + "-" + record.node + "-" + std::to_string(k) + ".bin"))
            .string();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(blob.data()),
              static_cast<std::streamsize>(blob.size()));
    out.close();
    if (!out) throw std::runtime_error("cannot write " + path);
    shown.push_back(path);
  }
  return shown;
}

void BlobOutput::report() const {
  if (!dir_.empty() || blobs_ == 0) return;
  std::fprintf(stderr,
               "plumber: %llu output values carried %llu blobs (%llu bytes), not written: "
               "--blobs-dir DIR writes them to files\n",
               static_cast<unsigned long long>(values_), static_cast<unsigned long long>(blobs_),
               static_cast<unsigned long long>(bytes_));
}

}  // namespace plumber::cli
