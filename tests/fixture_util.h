// Helpers shared by the tests that read the committed reference fixtures (tools/make_reference.py).
#pragma once

#include <cmath>
#include <cstddef>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/base/json.h"

namespace kd::test {

inline const std::string kFixtures = std::string(KD_SOURCE_DIR) + "/tests/fixtures";

inline Json read_json(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return Json::parse(ss.str());
}

// ||a - b|| / ||b|| in double (b is the reference).
inline double rel_err(const float* a, const float* b, size_t n) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < n; ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref += double(b[i]) * b[i];
  }
  return std::sqrt(diff / ref);
}

}  // namespace kd::test
