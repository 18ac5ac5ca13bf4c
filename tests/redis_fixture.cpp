#include "redis_fixture.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "process.hpp"

extern char** environ;

namespace plumber::test {
namespace fs = std::filesystem;
namespace {

pid_t spawn(const std::vector<std::string>& args, const fs::path& out, const fs::path& err) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const auto& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int error = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0) throw std::runtime_error("cannot start " + args[0]);
  return pid;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot find a free port");
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

fs::path temp_dir(const std::string& stem) {
  std::random_device random;
  fs::path dir = fs::temp_directory_path() /
                 (stem + std::to_string(::getpid()) + "-" + std::to_string(random() % 1'000'000));
  fs::create_directories(dir);
  return dir;
}

}  // namespace

Background::Background(const std::vector<std::string>& args, const fs::path& output_prefix)
    : out_(output_prefix.string() + ".out"), err_(output_prefix.string() + ".err") {
  pid_ = spawn(args, out_, err_);
}

Background::~Background() {
  if (!reaped_) {
    ::kill(pid_, SIGKILL);
    wait(std::chrono::seconds(10));
  }
}

void Background::signal(int number) const {
  ::kill(pid_, number);
}

bool Background::running() {
  if (reaped_) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    reaped_ = true;
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

int Background::wait(std::chrono::seconds limit) {
  if (!wait_until([this] { return !running(); }, limit)) return -1;
  return status_;
}

std::string Background::out() const {
  return read_file(out_);
}
std::string Background::err() const {
  return read_file(err_);
}

RedisServer::RedisServer() : dir_(temp_dir("plumber-redis-")) {
  for (int attempt = 0; attempt < 10; ++attempt) {
    port_ = free_port();
    if (start()) return;
  }
  throw std::runtime_error("could not start redis-server");
}

RedisServer::~RedisServer() {
  if (pid_ > 0) kill9();
  std::error_code ignored;
  fs::remove_all(dir_, ignored);
}

bool RedisServer::start() {
  pid_ = spawn({"redis-server", "--port", std::to_string(port_), "--bind", "127.0.0.1", "--dir",
                dir_.string(), "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--daemonize", "no"},
               dir_ / "redis.out", dir_ / "redis.err");
  const bool up = wait_until(
      [&] {
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
          pid_ = -1;
          return true;  // it exited: the port was taken
        }
        return cli({"PING"}).find("PONG") != std::string::npos;
      },
      std::chrono::seconds(20));
  return up && pid_ > 0;
}

void RedisServer::kill9() {
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

void RedisServer::restart() {
  if (!start()) throw std::runtime_error("could not restart redis-server on its port");
}

std::string RedisServer::cli(const std::vector<std::string>& args) const {
  std::vector<std::string> all{"/usr/bin/redis-cli", "-h", "127.0.0.1", "-p",
                               std::to_string(port_)};
  all.insert(all.end(), args.begin(), args.end());
  return run_process(all, "/dev/null", std::chrono::seconds(30)).out;
}

}  // namespace plumber::test
