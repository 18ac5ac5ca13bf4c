#pragma once

namespace plumber {

class Registry;

/// Registers the built-in coroutines and predicates of the design brief
/// (Registry::with_builtins() calls this).
void register_builtins(Registry& registry);

}  // namespace plumber
