#pragma once
/// Helpers shared by the test files: doctest printing of the types we compare.
#include <cstddef>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "plumber/json.hpp"

namespace doctest {

template <>
struct StringMaker<std::vector<std::string>> {
  static String convert(const std::vector<std::string>& lines) {
    std::ostringstream out;
    out << "{";
    for (std::size_t i = 0; i < lines.size(); ++i)
      out << (i ? ",\n " : "\n ") << '"' << lines[i] << '"';
    out << "\n}";
    return String(out.str().c_str());
  }
};

template <>
struct StringMaker<plumber::json> {
  static String convert(const plumber::json& value) { return String(value.dump().c_str()); }
};

}  // namespace doctest
