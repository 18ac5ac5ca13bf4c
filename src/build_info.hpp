#pragma once
// What this build of Plumber is: for `plumber --version` and the server's
// plumber_build_info metric.
#include <string>

namespace plumber::detail {

/// The version, commit and library versions this build was made with.
struct BuildInfo {
  std::string version;        ///< "0.1.0"
  std::string commit;         ///< short git commit ("-dirty" when modified), or "unknown"
  std::string boost;          ///< "1.81.0"
  std::string nlohmann_json;  ///< "3.11.2"
  std::string spdlog;         ///< "1.10.0"
  std::string compiler;       ///< "g++ 12.2.0"
};

/// This build's information.
const BuildInfo& build_info();

/// `plumber --version`: two lines, the version and commit, then what it was built with.
std::string version_text();

}  // namespace plumber::detail
