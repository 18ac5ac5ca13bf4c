#pragma once
/// Where the tests find the source tree and the programs the build made.
///
/// Defined in a file CMake generates (test_paths.cpp in the build tree), not
/// passed as -D flags: a flag holding the clone's absolute path made every
/// test translation unit (and its precompiled header) a ccache miss in a clone
/// at another path.
namespace plumber::test::paths {

extern const char* const source_dir;            ///< the source tree
extern const char* const exe;                   ///< the `plumber` program
extern const char* const test_plugin;           ///< tests/plugin_example.cpp, built
extern const char* const test_plugin_no_entry;  ///< tests/plugin_no_entry.cpp, built
extern const char* const demo_plugin;           ///< demos/plugin, built
extern const char* const embed_demo;            ///< demos/embed, built
extern const char* const trace_dir;             ///< where tests write traces

}  // namespace plumber::test::paths
