// Errors. InputError is bad input from the user (a recipe, a data file, a checkpoint): the command
// line prints its message and exits 2. Anything else that escapes is exit 1.
#pragma once

#include <stdexcept>
#include <string>

namespace kd {

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace kd
