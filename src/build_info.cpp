#include "build_info.hpp"

#include <spdlog/version.h>
#include <boost/version.hpp>
#include <nlohmann/json.hpp>

#include "plumber/version.hpp"

namespace plumber::detail {

extern const char* const git_commit;  // generated at build time (cmake/PlumberGitCommit.cmake)

namespace {

std::string dotted(int major, int minor, int patch) {
  return std::to_string(major) + '.' + std::to_string(minor) + '.' + std::to_string(patch);
}

std::string compiler() {
#if defined(__clang__)
  return "clang " + dotted(__clang_major__, __clang_minor__, __clang_patchlevel__);
#elif defined(__GNUC__)
  return "g++ " + dotted(__GNUC__, __GNUC_MINOR__, __GNUC_PATCHLEVEL__);
#else
  return "unknown compiler";
#endif
}

}  // namespace

const BuildInfo& build_info() {
  static const BuildInfo info{
      .version = PLUMBER_VERSION_STRING,
      .commit = git_commit,
      .boost = dotted(BOOST_VERSION / 100000, BOOST_VERSION / 100 % 1000, BOOST_VERSION % 100),
      .nlohmann_json = dotted(NLOHMANN_JSON_VERSION_MAJOR, NLOHMANN_JSON_VERSION_MINOR,
                              NLOHMANN_JSON_VERSION_PATCH),
      .spdlog = dotted(SPDLOG_VER_MAJOR, SPDLOG_VER_MINOR, SPDLOG_VER_PATCH),
      .compiler = compiler(),
  };
  return info;
}

std::string version_text() {
  const BuildInfo& b = build_info();
  return "plumber " + b.version + " (commit " + b.commit + ")\nbuilt with Boost " + b.boost +
         ", nlohmann/json " + b.nlohmann_json + ", spdlog " + b.spdlog + ", " + b.compiler;
}

}  // namespace plumber::detail
