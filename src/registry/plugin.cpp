#include "plumber/plugin.hpp"

#include <dlfcn.h>

#include "plumber/error.hpp"

namespace plumber {

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
}

}  // namespace plumber
