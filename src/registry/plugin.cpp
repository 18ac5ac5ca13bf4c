#include "plumber/plugin.hpp"

#include <dlfcn.h>
#include <stdlib.h>

#include <mutex>
#include <vector>

#include "plumber/error.hpp"
#include "workers/worker_launch.hpp"

namespace plumber {

namespace {
std::mutex g_plugins_mutex;
std::vector<std::string> g_plugin_paths;  // absolute, for worker processes
}  // namespace

std::vector<std::string> detail::loaded_plugin_paths() {
  std::lock_guard lock(g_plugins_mutex);
  return g_plugin_paths;
}

#define PLUMBER_STRINGIFY_(x) #x
#define PLUMBER_STRINGIFY(x) PLUMBER_STRINGIFY_(x)

void load_plugin(const std::string& path, Registry& registry) {
  // RTLD_NODELETE: coroutines the plugin registered must outlive any unload.
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (!handle) {
    const char* why = ::dlerror();
    throw UsageError("plugin " + path + ": cannot load: " + (why ? why : "unknown error"));
  }
  using Entry = void (*)(Registry&);
  auto entry = reinterpret_cast<Entry>(::dlsym(handle, PLUMBER_STRINGIFY(PLUMBER_PLUGIN_ENTRY)));
  if (!entry) {
    throw UsageError("plugin " + path + ": no entry point " +
                     PLUMBER_STRINGIFY(PLUMBER_PLUGIN_ENTRY) +
                     " (define it with PLUMBER_PLUGIN(registry) { ... })");
  }
  try {
    entry(registry);
  } catch (const std::exception& e) {
    throw UsageError("plugin " + path + ": " + e.what());
  }
  char* absolute = ::realpath(path.c_str(), nullptr);
  std::lock_guard lock(g_plugins_mutex);
  g_plugin_paths.push_back(absolute ? absolute : path);
  ::free(absolute);
}

}  // namespace plumber
