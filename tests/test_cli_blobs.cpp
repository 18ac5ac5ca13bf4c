// Binary data through `plumber run`, end to end: the `files` source reads files
// into shared-memory blobs, a worker process hashes them, and the outputs'
// blobs are written to --blobs-dir or described, never dropped unseen.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "process.hpp"
#include "test_paths.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using plumber::test::run_process;
using plumber::test::split_lines;

namespace {

struct Scratch {
  fs::path dir = fs::temp_directory_path() / ("plumber_blobs_" + std::to_string(::getpid()));
  Scratch() {
    fs::remove_all(dir);
    fs::create_directories(dir / "in");
    fs::create_directories(dir / "out");
  }
  ~Scratch() { fs::remove_all(dir); }
  std::string write(const fs::path& name, const std::string& bytes) const {
    const fs::path path = dir / name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path.string();
  }
};

std::string random_bytes(std::size_t size, unsigned seed) {
  std::mt19937 generate(seed);
  std::string bytes(size, '\0');
  for (char& c : bytes)
    c = static_cast<char>(generate() & 0xff);
  return bytes;
}

/// sha256sum's digest of a file: a second opinion, not Plumber's own code.
std::string sha256sum(const std::string& path) {
  const auto result = run_process({"/usr/bin/sha256sum", path});
  REQUIRE(result.exit_code == 0);
  return result.out.substr(0, 64);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("Cli.FilesSourceHashedInAWorker") {
  Scratch s;
  const std::string a = s.write("in/a.bin", random_bytes(3 << 20, 1));
  const std::string b = s.write("in/b.bin", random_bytes(1000, 2));
  s.write("in/skipped.txt", "not matched");
  const std::string graph =
      s.write("g.json", R"({"plumber": 1, "nodes": [
      {"id": "files", "coroutine": "files", "params": {"path": ")" +
                            (s.dir / "in").string() + R"(", "match": "*.bin"}},
      {"id": "hash", "coroutine": "sha256", "procs": 1},
      {"id": "out", "coroutine": "print"}],
    "edges": [{"from": "files", "to": "hash"}, {"from": "hash", "to": "out"}]})");
  const auto result = run_process({plumber::test::paths::exe, "run", graph, "--stats"});
  INFO(result.err);
  REQUIRE(result.exit_code == 0);
  // In name order; each digest computed in the worker equals sha256sum's.
  const auto lines = split_lines(result.out);
  REQUIRE(lines.size() == 2);
  CHECK(json::parse(lines[0])["value"] == sha256sum(a));
  CHECK(json::parse(lines[1])["value"] == sha256sum(b));
  // The bytes crossed to the worker by reference: the pool copied none of them.
  std::istringstream stats(
      result.err.substr(result.err.find("\nhash ", result.err.find("workers"))));
  std::vector<std::string> columns;
  for (std::string column; stats >> column && columns.size() < 11;)
    columns.push_back(column);
  REQUIRE(columns.size() == 11);
  CHECK(columns[0] == "hash");
  CHECK(columns[9] == "0");  // blob-copied
  // blob-shared: each byte handed over by reference twice, to the worker and back.
  CHECK(columns[10] == std::to_string(2 * ((3 << 20) + 1000)));
}

TEST_CASE("Cli.BlobsOfOutputsAreWrittenToBlobsDir") {
  Scratch s;
  const std::string a = s.write("in/a.bin", random_bytes(200000, 3));
  const std::string graph = s.write("g.json", R"({"plumber": 1, "nodes": [
      {"id": "files", "coroutine": "files", "params": {"path": ")" +
                                                  (s.dir / "in").string() + R"("}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "files", "to": "out"}]})");

  SUBCASE("with --blobs-dir, the bytes are in a file named in the output line") {
    const auto result = run_process(
        {plumber::test::paths::exe, "run", graph, "--blobs-dir", (s.dir / "out").string()});
    INFO(result.err);
    REQUIRE(result.exit_code == 0);
    const auto lines = split_lines(result.out);
    REQUIRE(lines.size() == 1);
    const json line = json::parse(lines[0]);
    CHECK(line["value"]["path"] == a);
    CHECK(line["value"]["size"] == 200000);
    REQUIRE(line["blobs"].size() == 1);
    const std::string written = line["blobs"][0]["path"];
    CHECK(fs::path(written).parent_path() == s.dir / "out");
    CHECK(fs::path(written).filename() == "1-out-0.bin");  // id, sink, blob index
    CHECK(read_file(written) == read_file(a));
    CHECK(result.err.find("not written") == std::string::npos);
  }
  SUBCASE("without, the line has the blob's size and digest, and stderr says so") {
    const auto result = run_process({plumber::test::paths::exe, "run", graph, "--records"});
    REQUIRE(result.exit_code == 0);
    const json line = json::parse(split_lines(result.out).at(0));
    CHECK(line["node"] == "out");
    CHECK(line["blobs"][0]["size"] == 200000);
    CHECK(line["blobs"][0]["sha256"] == sha256sum(a));
    CHECK(result.err.find("1 blobs of outputs were not written") != std::string::npos);
  }
  SUBCASE("--blobs-dir must be a directory") {
    const auto result = run_process({plumber::test::paths::exe, "run", graph, "--blobs-dir", a});
    CHECK(result.exit_code != 0);
    CHECK(result.err.find("--blobs-dir") != std::string::npos);
  }
}

TEST_CASE("Cli.FilesSourceReportsWhatItCannotRead") {
  Scratch s;
  SUBCASE("a path that is not a directory fails at start, naming it") {
    const std::string file = s.write("in/a.bin", "x");
    const std::string graph = s.write("g.json", R"({"plumber": 1, "nodes": [
        {"id": "files", "coroutine": "files", "params": {"path": ")" +
                                                    file + R"("}},
        {"id": "out", "coroutine": "print"}], "edges": [{"from": "files", "to": "out"}]})");
    const auto result = run_process({plumber::test::paths::exe, "run", graph});
    CHECK(result.exit_code != 0);
    CHECK(result.err.find(file + " is not a directory") != std::string::npos);
  }
  SUBCASE("a FIFO and a symlink are skipped, an empty file is an empty blob") {
    s.write("in/empty.bin", "");
    REQUIRE(::mkfifo((s.dir / "in" / "fifo.bin").c_str(), 0600) == 0);
    fs::create_symlink("/etc/passwd", s.dir / "in" / "link.bin");
    const std::string graph = s.write("g.json", R"({"plumber": 1, "nodes": [
        {"id": "files", "coroutine": "files", "params": {"path": ")" +
                                                    (s.dir / "in").string() + R"("}},
        {"id": "out", "coroutine": "print"}], "edges": [{"from": "files", "to": "out"}]})");
    const auto result = run_process({plumber::test::paths::exe, "run", graph});
    INFO(result.err);
    REQUIRE(result.exit_code == 0);
    const auto lines = split_lines(result.out);
    REQUIRE(lines.size() == 1);
    const json line = json::parse(lines[0]);
    CHECK(line["value"]["size"] == 0);
    CHECK(line["blobs"][0]["size"] == 0);
  }
}
