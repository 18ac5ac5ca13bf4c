// The catalog of `plumber serve --graphs DIR`: loading it, reloading it (SIGHUP,
// inotify, edits) and swapping the shared /v1 pipelines of changed graphs.
#include <fcntl.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "json_parse.hpp"
#include "plumber/plumber.hpp"
#include "server/page_api.hpp"
#include "server/protocol.hpp"
#include "server/server_impl.hpp"

namespace plumber::server {
namespace {

namespace fs = std::filesystem;
constexpr auto tuple_awaitable = asio::as_tuple(asio::use_awaitable);
/// A graph file larger than this is refused (a device such as /dev/zero never ends).
constexpr std::size_t kMaxFileBytes = std::size_t{64} << 20;

/// The bytes of a graph file; throws GraphError when it cannot be read.
std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    throw GraphError(file.string(), {{"graph.unreadable", "",
                                      "cannot open: " + std::string(std::strerror(errno)), ""}});
  }
  std::string text;
  std::array<char, 1 << 16> buffer;
  while (in.read(buffer.data(), buffer.size()) || in.gcount() > 0) {
    text.append(buffer.data(), static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxFileBytes) {
      throw GraphError(file.string(), {{"graph.too_large", "", "larger than 64 MiB", ""}});
    }
  }
  return text;
}

/// The graph files of `dir` by name (`NAME.json`, NAME a valid graph name).
std::map<std::string, fs::path> graph_files(const std::string& dir, std::error_code& ec) {
  std::map<std::string, fs::path> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path& path = it->path();
    std::error_code type_ec;
    if (path.extension() != ".json" || !it->is_regular_file(type_ec)) continue;
    const std::string name = path.stem().string();
    if (!valid_graph_name(name)) {
      spdlog::warn("{}: skipped: a graph name is letters, digits, '_', '-' and '.'", path.string());
      continue;
    }
    files.emplace(name, path);
  }
  return files;
}

/// Writes `text` to `file` atomically: a temporary file in the same directory,
/// flushed to disk, then renamed over it. Empty on success, else what failed.
std::string write_atomically(const fs::path& file, const std::string& text) {
  // Appended, not `"." + name + ".tmp"`: g++ 12 -O3 warns (-Wrestrict) on that form.
  std::string temporary_name = ".";
  temporary_name += file.filename().string();
  temporary_name += ".tmp";
  const fs::path temporary = file.parent_path() / temporary_name;
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return "cannot create " + temporary.string() + ": " + std::strerror(errno);
  std::size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string error = std::strerror(errno);
      ::close(fd);
      ::unlink(temporary.c_str());
      return "cannot write " + temporary.string() + ": " + error;
    }
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(temporary.c_str());
    return "cannot flush " + temporary.string() + ": " + std::strerror(errno);
  }
  if (::rename(temporary.c_str(), file.c_str()) != 0) {
    const std::string error = std::strerror(errno);
    ::unlink(temporary.c_str());
    return "cannot rename to " + file.string() + ": " + error;
  }
  return {};
}

/// True when one of the inotify events in `data` names a graph file (`*.json`,
/// not hidden: temporary files of editors and of edit_graph are).
bool names_a_graph(const char* data, std::size_t size) {
  for (std::size_t at = 0; at + sizeof(inotify_event) <= size;) {
    const auto* event = reinterpret_cast<const inotify_event*>(data + at);
    const std::string_view name = event->len > 0 ? std::string_view(event->name) : "";
    if (name.ends_with(".json") && !name.starts_with(".")) return true;
    at += sizeof(inotify_event) + event->len;
  }
  return false;
}

}  // namespace

void ServerCore::check_edit_options() const {
  if (!options.allow_edits) return;
  if (options.graphs_dir.empty()) {
    throw std::invalid_argument(
        "--allow-edits needs --graphs DIR: edited graphs are written there");
  }
  error_code ec;
  const auto address = asio::ip::make_address(options.bind, ec);
  if (!ec && !address.is_loopback() && options.token.empty()) {
    throw std::invalid_argument("--allow-edits on " + options.bind +
                                " (beyond loopback) needs --token: anyone who reaches the port "
                                "could change the graphs");
  }
}

/// At start every file must load: a broken one stops the server (exit 2).
void ServerCore::load_catalog() {
  if (options.graphs_dir.empty()) return;
  std::error_code ec;
  auto files = graph_files(options.graphs_dir, ec);
  if (ec) throw fs::filesystem_error("--graphs", options.graphs_dir, ec);
  for (const auto& [name, file] : files) {
    auto entry = std::make_shared<CatalogEntry>();
    entry->name = name;
    entry->text = read_text(file);
    entry->spec = parse_graph(entry->text, registry, file.string());
    try {
      apply_graph_policy(entry->spec, catalog_limits());
    } catch (const GraphError& e) {
      throw GraphError(file.string(), e.diagnostics());
    }
    entry->document = detail::parse_json(entry->text);  // it loaded above
    entry->description = entry->document.value("description", std::string());
    entry->has_input = entry->spec.host_fed_input().has_value();
    metrics.catalog_state(name, true, entry->version);
    catalog_.emplace(name, std::move(entry));
  }
}

void ServerCore::start_services() {
  for (const auto& entry : graphs()) {
    if (!entry->has_input) continue;
    if (auto service = start_service(*entry)) {
      std::lock_guard lock(catalog_mutex_);
      services_.emplace(entry->name, std::move(service));
    }
  }
}

std::shared_ptr<Service> ServerCore::start_service(const CatalogEntry& entry) {
  std::size_t procs = 0;
  for (const NodeSpec& node : entry.spec.nodes)
    procs += node.procs;
  if (auto refused = reserve_run(procs, /*count_run=*/false)) {
    spdlog::error("graph {}: version {} not served on /v1: {}", entry.name, entry.version,
                  refused->second);
    return nullptr;
  }
  auto service = std::make_shared<Service>();
  service->name = entry.name;
  service->version = entry.version;
  service->procs = procs;
  try {
    service->pipeline = std::make_shared<Pipeline>(
        Plumber(registry).build(entry.spec, executor(), {.collect_timings = true}));
    Service* raw = service.get();
    service->pipeline->on_done([self = weak_from_this(), raw] {
      raw->done = true;
      if (auto server = self.lock()) server->check_stopped();
    });
    service->pipeline->start();
  } catch (const std::exception& e) {
    release_run(procs, false);
    spdlog::error("graph {}: version {} not served on /v1: {}", entry.name, entry.version,
                  e.what());
    return nullptr;
  }
  service->metrics_key = metrics.track(entry.name, service->pipeline);
  return service;
}

std::shared_ptr<const CatalogEntry> ServerCore::find_graph(std::string_view name) const {
  std::lock_guard lock(catalog_mutex_);
  auto it = catalog_.find(name);
  return it == catalog_.end() ? nullptr : it->second;
}

std::shared_ptr<Service> ServerCore::find_service(std::string_view name) const {
  std::lock_guard lock(catalog_mutex_);
  auto it = services_.find(name);
  return it == services_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<const CatalogEntry>> ServerCore::graphs() const {
  std::lock_guard lock(catalog_mutex_);
  std::vector<std::shared_ptr<const CatalogEntry>> all;
  for (const auto& [name, entry] : catalog_)
    all.push_back(entry);
  return all;
}

std::vector<std::shared_ptr<Service>> ServerCore::all_services() const {
  std::lock_guard lock(catalog_mutex_);
  std::vector<std::shared_ptr<Service>> all;
  for (const auto& [name, service] : services_)
    all.push_back(service);
  all.insert(all.end(), retired_.begin(), retired_.end());
  return all;
}

json ServerCore::services_json() const {
  json all = json::array();
  for (const auto& service : all_services()) {
    if (service->done) continue;
    json one = json::object();
    one["name"] = service->name;
    one["version"] = service->version;
    one["retired"] = service->retired.load();
    one["stats"] = stats_json(service->pipeline->stats());
    all.push_back(std::move(one));
  }
  return all;
}

void ServerCore::prune_retired() {
  std::erase_if(retired_, [this](const std::shared_ptr<Service>& service) {
    if (!service->done) return false;
    metrics.finished(service->metrics_key, "completed");
    release_run(service->procs, false);
    return true;
  });
}

void ServerCore::reload(const std::string& why) {
  if (options.graphs_dir.empty()) return;
  std::lock_guard reload_lock(reload_mutex_);
  if (stopping()) return;
  std::error_code ec;
  const auto files = graph_files(options.graphs_dir, ec);
  if (ec) {
    spdlog::error("catalog: {}: cannot read {}: {}; nothing changes", why, options.graphs_dir,
                  ec.message());
    return;
  }
  std::size_t changes = 0;

  // Removed files: their graphs go, and their pipelines drain.
  std::vector<std::string> removed;
  {
    std::lock_guard lock(catalog_mutex_);
    for (const auto& [name, entry] : catalog_)
      if (!files.contains(name)) removed.push_back(name);
    std::erase_if(broken_, [&](const auto& item) { return !files.contains(item.first); });
  }
  for (const std::string& name : removed) {
    std::shared_ptr<Service> old;
    {
      std::lock_guard lock(catalog_mutex_);
      catalog_.erase(name);
      if (auto it = services_.find(name); it != services_.end()) {
        old = std::move(it->second);
        services_.erase(it);
        retired_.push_back(old);
      }
    }
    if (old) {
      old->retired = true;
      old->pipeline->end_input();
    }
    metrics.catalog_removed(name);
    metrics.count_reload("removed");
    ++changes;
    spdlog::warn("catalog: graph {}: its file was removed; it is no longer served", name);
  }

  for (const auto& [name, file] : files) {
    const auto current = find_graph(name);
    std::string text;
    std::shared_ptr<CatalogEntry> entry;
    std::vector<Diagnostic> problems;
    try {
      text = read_text(file);
      bool seen = false;
      {
        std::lock_guard lock(catalog_mutex_);
        auto broken = broken_.find(name);
        if (current && current->text == text) {
          // Unchanged, or put back as it was after a broken edit.
          if (broken != broken_.end()) {
            broken_.erase(broken);
            metrics.catalog_state(name, true, current->version);
          }
          seen = true;
        } else if (broken != broken_.end() && broken->second.first == text) {
          seen = true;  // still broken, already reported
        }
      }
      if (seen) continue;
      entry = std::make_shared<CatalogEntry>();
      entry->name = name;
      entry->text = text;
      entry->spec = parse_graph(text, registry, file.string());
      apply_graph_policy(entry->spec, catalog_limits());
      entry->document = detail::parse_json(text);
      entry->description = entry->document.value("description", std::string());
      entry->has_input = entry->spec.host_fed_input().has_value();
      entry->version = current ? current->version + 1 : 1;
    } catch (const GraphError& e) {
      problems = e.diagnostics();
    }
    std::shared_ptr<Service> service;
    if (problems.empty() && entry->has_input) {
      service = start_service(*entry);
      if (!service) {
        problems.push_back(
            {"graph.not_served", "", "its /v1 pipeline did not start (see above)", ""});
      }
    }
    if (!problems.empty()) {
      for (const Diagnostic& d : problems) {
        spdlog::error("catalog: {}; {}", d.format(file.string()),
                      current ? "version " + std::to_string(current->version) + " keeps serving"
                              : std::string("the graph is not served"));
      }
      std::lock_guard lock(catalog_mutex_);
      broken_[name] = {text, problems.front().format()};
      metrics.catalog_state(name, false, current ? current->version : 0);
      metrics.count_reload("rejected");
      ++changes;
      continue;
    }
    std::shared_ptr<Service> old;
    {
      std::lock_guard lock(catalog_mutex_);
      catalog_[name] = entry;
      broken_.erase(name);
      if (auto it = services_.find(name); it != services_.end()) {
        old = std::move(it->second);
        services_.erase(it);
        retired_.push_back(old);
      }
      if (service) services_[name] = service;
    }
    // The old pipeline takes no new values; those in flight finish on it.
    if (old) {
      old->retired = true;
      old->pipeline->end_input();
    }
    if (service && stopping()) service->pipeline->end_input();
    metrics.catalog_state(name, true, entry->version);
    metrics.count_reload("applied");
    ++changes;
    spdlog::info("catalog: graph {}: version {} {}", name, entry->version,
                 current ? "replaces version " + std::to_string(current->version) : "added");
  }
  // A quiet inotify event (a file rewritten unchanged) is not worth a line.
  const bool quiet = changes == 0 && why.starts_with("a file changed");
  spdlog::log(quiet ? spdlog::level::debug : spdlog::level::info,
              "catalog: {}: {} changed file{} in {}", why, changes, changes == 1 ? "" : "s",
              options.graphs_dir);
  std::lock_guard lock(catalog_mutex_);
  prune_retired();
}

void ServerCore::open_catalog_watch() {
  const int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) {
    spdlog::warn("catalog: cannot watch {} (inotify: {}); reload with SIGHUP", options.graphs_dir,
                 std::strerror(errno));
    return;
  }
  if (::inotify_add_watch(fd, options.graphs_dir.c_str(),
                          IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE) < 0) {
    spdlog::warn("catalog: cannot watch {} (inotify: {}); reload with SIGHUP", options.graphs_dir,
                 std::strerror(errno));
    ::close(fd);
    return;
  }
  inotify_ = std::make_unique<asio::posix::stream_descriptor>(strand_, fd);
}

asio::awaitable<void> ServerCore::watch_catalog() {
  auto self = shared_from_this();
  alignas(inotify_event) std::array<char, 8192> buffer;
  // (No break or continue past a live local in a coroutine: g++ 12.)
  bool open = true;
  while (open && !stopping()) {
    std::tuple<error_code, std::size_t> read =
        co_await inotify_->async_read_some(asio::buffer(buffer), tuple_awaitable);
    open = !std::get<0>(read) && !stopping();
    if (open && names_a_graph(buffer.data(), std::get<1>(read))) {
      // An editor writes in bursts: let the burst end, then reload once.
      asio::steady_timer settle(strand_, std::chrono::milliseconds(100));
      co_await settle.async_wait(tuple_awaitable);
      if (!stopping()) reload("a file changed in " + options.graphs_dir);
    }
  }
}

void ServerCore::edit_graph(const Request& request, Response& response, std::string_view name) {
  if (!options.allow_edits) {
    refuse(request, response, http::status::forbidden, "graph.edits_not_allowed",
           "this server does not take edits to its graphs (plumber serve --allow-edits)");
    return;
  }
  if (!valid_graph_name(name)) {
    refuse(request, response, http::status::bad_request, "graph.bad_name",
           "a graph name is letters, digits, '_', '-' and '.', not starting with '.'");
    return;
  }
  if (stopping()) {
    refuse(request, response, http::status::service_unavailable, "server.shutting_down",
           stop_reason());
    return;
  }
  const std::string graph(name);
  const fs::path file = fs::path(options.graphs_dir) / (graph + ".json");
  if (request.method() == http::verb::delete_) {
    std::error_code ec;
    if (!fs::remove(file, ec)) {
      if (ec) {
        refuse(request, response, http::status::internal_server_error, "graph.write_failed",
               "cannot remove " + file.string() + ": " + ec.message());
      } else {
        refuse(request, response, http::status::not_found, "graph.unknown_name",
               "no graph named \"" + graph + "\"");
      }
      return;
    }
    reload("DELETE /v1/graphs/" + graph);
    json body = json::object();
    body["deleted"] = graph;
    set_json(response, http::status::ok, body);
    return;
  }
  json document;
  try {
    document = detail::parse_json(request.body());
  } catch (const detail::JsonParseError& e) {
    refuse(request, response, http::status::bad_request, "http.bad_request",
           "the body is not JSON: " + std::string(e.what()));
    return;
  }
  // As a submitted graph (no `exec`): a client's edit must not become a program
  // the server runs once the file is in the operator's directory.
  json check = validation_json(document, registry, limits);
  if (!check["ok"].get<bool>()) {
    const json& first = check["diagnostics"].front();
    json body = error_body(first["code"].get<std::string>(), first["message"].get<std::string>());
    body["error"]["diagnostics"] = check["diagnostics"];
    spdlog::info("refused PUT /v1/graphs/{}: the graph does not load", graph);
    set_json(response, http::status::unprocessable_entity, body);
    return;
  }
  const bool existed = find_graph(graph) != nullptr;
  const std::string text = dump(document) + "\n";
  if (std::string failed = write_atomically(file, text); !failed.empty()) {
    refuse(request, response, http::status::internal_server_error, "graph.write_failed", failed);
    return;
  }
  reload("PUT /v1/graphs/" + graph);
  const auto entry = find_graph(graph);
  if (!entry || entry->text != text) {
    refuse(request, response, http::status::internal_server_error, "graph.not_served",
           "the graph was written but not loaded (see the server's log)");
    return;
  }
  json body = json::object();
  body["name"] = graph;
  body["version"] = entry->version;
  body["graph"] = graph_shape(graph, entry->spec);
  set_json(response, existed ? http::status::ok : http::status::created, body);
}

// --- graphs that are not in the catalog ------------------------------------------------

GraphSpec ServerCore::load_submitted(const json& document) const {
  auto too_big = check_graph_size(document, limits);
  if (!too_big.empty()) throw GraphError("<submitted>", std::move(too_big));
  GraphSpec spec = graph_from_json(document, registry, "<submitted>");
  apply_graph_policy(spec, limits);
  return spec;
}

std::string ServerCore::nearest_graph(std::string_view) const {
  std::string names;
  for (const auto& entry : graphs())
    names += (names.empty() ? "" : ", ") + entry->name;
  if (names.empty()) return "this server has no named graphs (plumber serve --graphs DIR)";
  return "named graphs: " + names;
}

}  // namespace plumber::server
