#pragma once
#include "plumber/registry.hpp"

namespace plumber::detail {

void register_builtin_sources(Registry& registry);
void register_files_source(Registry& registry);
void register_builtin_transforms(Registry& registry);
/// `exec`: src/exec/exec_step.cpp.
void register_builtin_exec(Registry& registry);

}  // namespace plumber::detail
