#pragma once
/// The JSON type of every value that flows through Plumber.
///
/// `ordered_json` keeps object keys in insertion order, so a zipped object lists
/// its predecessors in graph order and outputs keep the field order of inputs.
#include <nlohmann/json.hpp>

#include "plumber/json_fwd.hpp"
