// `plumber serve`: the server's life: constructing it (its pipeline threads),
// listening, accepting connections, counting what they hold, shutting down.
// HTTP connections: http_session.cpp; /v1 process requests: v1_process.cpp;
// WebSocket: ws_session.cpp, a client's runs: client_runs.cpp; the catalog of
// graphs: catalog.cpp.
#include <algorithm>
#include <climits>
#include <filesystem>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "server/server_core.hpp"

namespace plumber::server {
namespace {

namespace fs = std::filesystem;
constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);

}  // namespace

// --- ServerCore ------------------------------------------------------------

ServerCore::ServerCore(const Registry& registry_, asio::any_io_executor executor,
                       ServerOptions options_)
    : registry(registry_),
      options(std::move(options_)),
      executor_(executor),
      strand_(asio::make_strand(executor)),
      acceptor_(strand_),
      grace_timer_(strand_) {
  limits.max_nodes = options.max_nodes;
  limits.max_threads = options.max_threads;
  if (!options.allow_files.empty()) limits.allow_files = fs::path(options.allow_files);
  check_edit_options();
  load_catalog();

  listen();
  // Last: nothing may throw once the threads run (a joinable thread must not be destroyed).
  pipeline_work_.emplace(pipeline_io_.get_executor());
  std::lock_guard lock(pipeline_mutex_);
  for (std::size_t i = 0; i < std::max<std::size_t>(1, options.pipeline_threads); ++i)
    start_pipeline_thread();
}

void ServerCore::start_pipeline_thread() {
  ++pipeline_running_;
  pipeline_threads_.emplace_back([this] {
    pipeline_io_.run();
    std::lock_guard lock(pipeline_mutex_);
    --pipeline_running_;
    pipeline_exited_.notify_all();
  });
}

void ServerCore::replace_stuck_pipeline_thread() {
  std::lock_guard lock(pipeline_mutex_);
  if (!pipeline_work_ || stopping_) return;  // shutting down: nothing new runs
  if (replacement_threads_ >= std::max<std::size_t>(1, options.pipeline_threads)) {
    spdlog::warn(
        "a step that never returns holds a pipeline thread; no more are started "
        "({} already replace such threads)",
        replacement_threads_);
    return;
  }
  ++replacement_threads_;
  start_pipeline_thread();
  spdlog::info("a step that never returns holds a pipeline thread: started another");
}

void ServerCore::listen() {
  // Error codes, not Asio's throwing calls: their text names a Boost source file.
  error_code ec;
  const auto address = asio::ip::make_address(options.bind, ec);
  if (ec) throw std::system_error(ec, "--bind " + options.bind + ": not an IP address");
  const tcp::endpoint endpoint(address, options.port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    const std::string host = address.is_v6() ? "[" + options.bind + "]" : options.bind;
    throw std::system_error(ec, "cannot listen on " + host + ":" + std::to_string(options.port));
  }
}

ServerCore::~ServerCore() {
  for (auto& service : all_services())
    service->pipeline->stop(false);
  if (!wait_pipelines(std::chrono::seconds(5))) {
    spdlog::warn("a step of a served graph still runs; stopping its threads anyway");
  }
  pipeline_io_.stop();
  for (auto& t : pipeline_threads_)
    t.join();  // blocks while a synchronous step runs: it cannot be interrupted
}

bool ServerCore::wait_pipelines(std::chrono::milliseconds limit) {
  std::unique_lock lock(pipeline_mutex_);
  pipeline_work_.reset();
  return pipeline_exited_.wait_for(lock, limit, [this] { return pipeline_running_ == 0; });
}

std::optional<std::pair<std::string, std::string>> ServerCore::reserve_run(std::size_t procs,
                                                                           bool count_run) {
  if (count_run && ++total_runs_ > options.max_total_runs) {
    --total_runs_;
    return std::pair<std::string, std::string>(
        "server.too_many_runs", "the server runs " + std::to_string(options.max_total_runs) +
                                    " graphs at once (--max-total-runs); try again later");
  }
  if ((total_procs_ += procs) > options.max_total_procs) {
    total_procs_ -= procs;
    if (count_run) --total_runs_;
    return std::pair<std::string, std::string>(
        "server.too_many_procs", "the graph needs " + std::to_string(procs) +
                                     " worker processes, and the server has no more than " +
                                     std::to_string(options.max_total_procs) +
                                     " in all (--max-total-procs); try again later");
  }
  return std::nullopt;
}

void ServerCore::release_run(std::size_t procs, bool count_run) {
  total_procs_ -= procs;
  if (count_run) --total_runs_;
}

void ServerCore::check_total_send_queue() {
  const std::int64_t limit = static_cast<std::int64_t>(options.max_total_send_queue);
  if (metrics.send_queue_bytes.load() <= limit) return;
  std::shared_ptr<Connection> slowest;
  std::size_t most = 0;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, weak] : connections_) {
      auto c = weak.lock();
      const std::size_t queued = c ? c->queued_bytes() : 0;
      if (queued > most) {
        most = queued;
        slowest = std::move(c);
      }
    }
  }
  if (slowest) {
    slowest->close_for("the server's send queues are full (--max-total-send-queue " +
                       std::to_string(options.max_total_send_queue) +
                       " bytes), and this client has the most queued: " + std::to_string(most) +
                       " bytes");
  }
}

void ServerCore::start() {
  start_services();
  asio::co_spawn(strand_, accept(), asio::detached);
  // Watched before start() returns: a file written once the server says it
  // listens is seen.
  if (!options.graphs_dir.empty() && options.watch_graphs) open_catalog_watch();
  if (inotify_) asio::co_spawn(strand_, watch_catalog(), asio::detached);
}

asio::awaitable<void> ServerCore::accept() {
  auto self = shared_from_this();
  for (;;) {
    auto socket_strand = asio::make_strand(executor_);
    std::tuple<error_code, tcp::socket> accepted =
        co_await acceptor_.async_accept(socket_strand, tuple_awaitable);
    const error_code ec = std::get<0>(accepted);
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      // Out of file descriptors, mostly: wait a little rather than spin.
      spdlog::warn("accept: {}", ec.message());
      asio::steady_timer pause(strand_, std::chrono::milliseconds(50));
      co_await pause.async_wait(tuple_awaitable);
      continue;
    }
    ++metrics.connections_total;
    tcp::socket socket = std::move(std::get<1>(accepted));
    if (static_cast<std::size_t>(metrics.connections.load()) >= options.max_connections) {
      ++metrics.connections_refused;
      asio::co_spawn(socket.get_executor(), refuse_connection(std::move(socket)), asio::detached);
      continue;
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    if (options.socket_send_buffer > 0) {
      const std::size_t bytes = std::min<std::size_t>(options.socket_send_buffer, INT_MAX / 2);
      socket.set_option(asio::socket_base::send_buffer_size(static_cast<int>(bytes)), ignored);
    }
    start_http_session(self, std::move(socket));
  }
}

std::uint64_t ServerCore::add_connection(const std::shared_ptr<Connection>& connection) {
  bool tell = false;
  std::string reason;
  std::uint64_t id = 0;
  {
    std::lock_guard lock(mutex_);
    id = ++next_connection_;
    connections_.emplace(id, connection);
    tell = stopping_.load();
    reason = stop_reason_;
  }
  if (tell) connection->begin_shutdown(reason);
  return id;
}

void ServerCore::replace_connection(std::uint64_t id,
                                    const std::shared_ptr<Connection>& connection) {
  bool tell = false;
  std::string reason;
  {
    std::lock_guard lock(mutex_);
    connections_[id] = connection;
    tell = stopping_.load();
    reason = stop_reason_;
  }
  if (tell) connection->begin_shutdown(reason);
}

void ServerCore::remove_connection(std::uint64_t id) {
  {
    std::lock_guard lock(mutex_);
    connections_.erase(id);
  }
  if (stopping_) check_stopped();
}

std::string ServerCore::stop_reason() const {
  std::lock_guard lock(mutex_);
  return stop_reason_;
}

void ServerCore::shutdown(std::string reason) {
  asio::post(strand_, [self = shared_from_this(), reason = std::move(reason)] {
    std::vector<std::shared_ptr<Connection>> live;
    bool first = false;
    {
      std::lock_guard lock(self->mutex_);
      first = !self->stopping_.exchange(true);
      if (first) self->stop_reason_ = reason;
      for (auto& [id, weak] : self->connections_) {
        if (auto c = weak.lock()) live.push_back(std::move(c));
      }
    }
    if (!first) {
      spdlog::info("shutdown: {}; cancelling what still runs", reason);
      self->cancel_everything(reason + "; the grace period was cut short");
      return;
    }
    if (self->inotify_) {
      error_code ignored;
      self->inotify_->close(ignored);
    }
    // The listener stays open until everything has closed: new connections
    // are told why they get no new work (503), and /readyz says "stopping".
    spdlog::info("shutdown: {}; grace period {} ms", reason, self->options.grace.count());
    for (auto& c : live)
      c->begin_shutdown(reason);
    for (auto& service : self->all_services())
      service->pipeline->end_input();
    self->grace_timer_.expires_after(self->options.grace);
    self->grace_timer_.async_wait([self, reason](error_code ec) {
      if (!ec) self->cancel_everything(reason + "; the grace period is over");
    });
    self->check_stopped();
  });
}

void ServerCore::cancel_everything(const std::string& reason) {
  std::vector<std::shared_ptr<Connection>> live;
  {
    std::lock_guard lock(mutex_);
    cancelled_ = true;
    for (auto& [id, weak] : connections_) {
      if (auto c = weak.lock()) live.push_back(std::move(c));
    }
  }
  for (auto& c : live)
    c->cancel(reason);
  for (auto& service : all_services())
    service->pipeline->stop(false);
  check_stopped();  // it no longer waits for the services (a step may never return)
}

void ServerCore::check_stopped() {
  asio::post(strand_, [self = shared_from_this()] {
    bool cancelled = false;
    {
      std::lock_guard lock(self->mutex_);
      if (!self->stopping_ || self->stopped_ || !self->connections_.empty()) return;
      cancelled = self->cancelled_;
    }
    const auto services = self->all_services();
    for (auto& service : services) {
      if (!service->done && !cancelled) return;
    }
    {
      std::lock_guard lock(self->mutex_);
      self->stopped_ = true;
    }
    self->grace_timer_.cancel();
    error_code ignored;
    self->acceptor_.close(ignored);
    for (auto& service : services)
      self->metrics.finished(service->metrics_key, "completed");
    if (self->stopped_handler) self->stopped_handler();
  });
}

}  // namespace plumber::server

namespace plumber {

// --- Server ------------------------------------------------------------------

Server::Server(const Registry& registry, boost::asio::any_io_executor executor,
               ServerOptions options)
    : core_(std::make_shared<server::ServerCore>(registry, std::move(executor),
                                                 std::move(options))) {}

Server::~Server() = default;

std::uint16_t Server::port() const noexcept {
  server::error_code ec;
  return core_->acceptor_.local_endpoint(ec).port();
}

void Server::start() {
  core_->start();
}

void Server::shutdown(std::string reason) {
  core_->shutdown(std::move(reason));
}

void Server::reload() {
  boost::asio::post(core_->strand_,
                    [core = core_] { core->reload("a reload was asked for (SIGHUP)"); });
}

void Server::on_stopped(std::function<void()> handler) {
  core_->stopped_handler = std::move(handler);
}

bool Server::wait_pipelines(std::chrono::milliseconds limit) {
  return core_->wait_pipelines(limit);
}

}  // namespace plumber
