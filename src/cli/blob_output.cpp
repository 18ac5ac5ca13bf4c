#include "cli/blob_output.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sha256.hpp"

namespace plumber::cli {
namespace {

/// Writes `blob` to a new file at `path`; an empty string, or what went wrong.
std::string write_file(const std::string& path, const Blob& blob) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return std::strerror(errno);
  std::size_t done = 0;
  std::string error;
  while (done < blob.size() && error.empty()) {
    const ssize_t n = ::write(fd, blob.data() + done, blob.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) error = std::strerror(errno);
    if (n > 0) done += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0 && error.empty()) error = std::strerror(errno);
  return error;
}

}  // namespace

json BlobOutput::describe(std::uint64_t id, const std::string& node,
                          const std::vector<Blob>& blobs) {
  json all = json::array();
  for (std::size_t k = 0; k < blobs.size(); ++k) {
    const Blob& blob = blobs[k];
    json one = json::object();
    one["size"] = blob.size();
    if (directory_.empty()) {
      one["sha256"] = detail::sha256_hex(blob.data(), blob.size());
      ++unwritten_;
    } else {
      const std::string path =
          directory_ + "/" + std::to_string(id) + "-" + node + "-" + std::to_string(k) + ".bin";
      if (std::string error = write_file(path, blob); error.empty()) {
        one["path"] = path;
      } else {
        one["error"] = "cannot write " + path + ": " + error;
        ++unwritten_;
      }
    }
    all.push_back(std::move(one));
  }
  return all;
}

}  // namespace plumber::cli
