#pragma once
/// The name of Plumber's JSON type without its definition (nlohmann's
/// json_fwd.hpp): enough for a header that only passes values by reference.
/// Include plumber/json.hpp where a value is made, read or stored.
#include <nlohmann/json_fwd.hpp>

namespace plumber {
using json = nlohmann::ordered_json;
}  // namespace plumber
