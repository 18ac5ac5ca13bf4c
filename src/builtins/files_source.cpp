// The `files` source: each regular file of a directory whose name matches a
// glob, its bytes read straight into a shared-memory blob (they reach a worker
// process with no copy), its value {"path", "size"}.
#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "builtins/builtins_detail.hpp"
#include "plumber/registry.hpp"
#include "plumber/worker_pool.hpp"

namespace plumber::detail {
namespace {

namespace fs = std::filesystem;

/// Closes a file descriptor however the read ends.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

class FilesSource final : public Source {
 public:
  FilesSource(std::string directory, std::string match)
      : directory_(std::move(directory)), match_(std::move(match)) {}

  void on_start() override {
    std::error_code ec;
    if (!fs::is_directory(directory_, ec))
      throw std::runtime_error("files: " + directory_ + " is not a directory");
    // Sorted: a run emits the same files in the same order every time.
    for (fs::directory_iterator it(directory_, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      // Regular files only, symlinks not followed: a FIFO would block, and a
      // link may lead out of a directory the server allows.
      if (!it->is_regular_file(ec) || it->is_symlink(ec)) continue;
      if (::fnmatch(match_.c_str(), name.c_str(), FNM_PERIOD) == 0)
        paths_.push_back(it->path().string());
    }
    if (ec) throw std::runtime_error("files: listing " + directory_ + ": " + ec.message());
    std::sort(paths_.begin(), paths_.end());
  }
  // Reading a large file takes time: off the event loop.
  bool is_blocking() const noexcept override { return true; }
  std::optional<std::uint64_t> size_hint() const override { return paths_.size(); }

  std::optional<json> next() override {
    if (next_ >= paths_.size()) return std::nullopt;
    const std::string& path = paths_[next_++];
    blobs_.clear();
    blobs_.push_back(read(path));
    json value = json::object();
    value["path"] = path;
    value["size"] = blobs_.front().size();
    return value;
  }
  std::vector<Blob> take_blobs() override { return std::move(blobs_); }

 private:
  static Blob read(const std::string& path) {
    Fd file{::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)};
    if (file.fd < 0)
      throw SourceItemError("files: cannot open " + path + ": " + std::strerror(errno));
    struct stat info {};
    if (::fstat(file.fd, &info) != 0 || !S_ISREG(info.st_mode))
      throw SourceItemError("files: " + path + " is no longer a regular file");
    const auto size = static_cast<std::size_t>(info.st_size);
    if (size == 0) return Blob(std::vector<std::byte>{});
    SharedBytes bytes;
    try {
      bytes = allocate_shared_bytes(size);
    } catch (const std::bad_alloc&) {
      throw SourceItemError("files: " + path + ": " + std::to_string(size) +
                            " bytes do not fit in the shared-memory arena (PLUMBER_ARENA_MB)");
    }
    std::size_t done = 0;
    while (done < size) {
      const ssize_t n = ::read(file.fd, bytes.data() + done, size - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw SourceItemError("files: reading " + path + ": " + std::strerror(errno));
      if (n == 0) throw SourceItemError("files: " + path + " shrank while it was read");
      done += static_cast<std::size_t>(n);
    }
    return std::move(bytes).freeze();
  }

  std::string directory_, match_;
  std::vector<std::string> paths_;
  std::size_t next_ = 0;
  std::vector<Blob> blobs_;
};

}  // namespace

void register_files_source(Registry& registry) {
  CoroutineInfo files;
  files.name = "files";
  files.kind = CoroutineKind::source;
  files.description =
      "emits each regular file of a directory whose name matches `match`, as a blob in shared "
      "memory with the value {\"path\", \"size\"}";
  files.params = {{"path", ParamType::string, true, nullptr, "the directory"},
                  {"match", ParamType::string, false, "*",
                   "glob for file names (fnmatch; a leading dot is matched only by a dot)"}};
  files.make_source = [](const json& p) {
    return std::make_unique<FilesSource>(p.at("path").get<std::string>(),
                                         p.at("match").get<std::string>());
  };
  files.emits = {ValueTypes::object, ValueTypes::blob};
  files.capabilities.reads_files = true;
  files.capabilities.reads_directory = true;
  registry.add(std::move(files));
}

}  // namespace plumber::detail
