#pragma once
/// What the web page asks the server while a graph is being built: the palette
/// of registered coroutines and the live validation of a draft. Pure functions
/// of JSON (no Beast, no I/O), routed by server.cpp as `GET /v1/coroutines`
/// and `POST /v1/validate` (docs/protocol.md).
#include "plumber/json.hpp"
#include "plumber/registry.hpp"
#include "server/graph_policy.hpp"

namespace plumber::server {

/// `{"coroutines": [{name, kind, description, params: [{name, type, required,
/// default?, description}], worker_capable, accepts, emits}], "predicates":
/// [{name, description}]}`, in the registry's order (as `plumber list --json`).
json palette_json(const Registry& registry);

/// Validates a draft graph document exactly as a submit would (loader
/// diagnostics, then the server's policy): `{"ok": true, "graph": shape}` or
/// `{"ok": false, "diagnostics": [{code, pointer, message, hint}]}`.
json validation_json(const json& document, const Registry& registry, const GraphLimits& limits);

}  // namespace plumber::server
