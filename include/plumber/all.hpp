#pragma once
/// Everything a user of Plumber needs, in one include.
#include "plumber/blob.hpp"
#include "plumber/builtins.hpp"
#include "plumber/error.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/json.hpp"
#include "plumber/message.hpp"
#include "plumber/pipeline.hpp"
#include "plumber/plugin.hpp"
#include "plumber/plumber.hpp"
#include "plumber/processor.hpp"
#include "plumber/registry.hpp"
#include "plumber/worker_pool.hpp"
