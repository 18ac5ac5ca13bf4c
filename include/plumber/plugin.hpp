#pragma once
#include <string>

#include "plumber/registry.hpp"

/// The one entry point a plugin shared library exports. Define it with
/// PLUMBER_PLUGIN(registry) { registry.add_function(...); }
#define PLUMBER_PLUGIN_ENTRY plumber_plugin_register_v1
#define PLUMBER_PLUGIN(registry_name) \
  extern "C" void PLUMBER_PLUGIN_ENTRY(::plumber::Registry& registry_name)

namespace plumber {

/// Loads the shared library at `path` and lets it register into `registry`.
/// Throws UsageError naming the library when it cannot be opened, lacks the entry
/// point, or registers a name that is already taken.
void load_plugin(const std::string& path, Registry& registry);

}  // namespace plumber
