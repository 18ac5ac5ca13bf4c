#pragma once
#include <cstddef>
#include <string_view>

namespace plumber::detail {

/// Levenshtein distance, for "did you mean" hints (registry names, server ops and fields).
std::size_t edit_distance(std::string_view a, std::string_view b);

}  // namespace plumber::detail
