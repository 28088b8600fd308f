// Errors, and which exit status each one means (engine/cli/main.cpp maps them):
// - InputError: bad input from the user, found where recipes, data, tokenizer files, checkpoints
//   and the command line are read. The message names the file, key or argument and what was
//   expected. Exit 2.
// - ContractError: a precondition of an engine function that its caller broke (an op given
//   mismatched sizes, a backend asked for a batch beyond its plan). A programming error, never the
//   user's: exit 1. Thrown by KD_REQUIRE, which names the file, line and condition.
// - Anything else that escapes (a failed write, a NaN that stops a run, a CUDA error): exit 1.
#pragma once

#include <stdexcept>
#include <string>

namespace kd {

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ContractError : std::logic_error {
  using std::logic_error::logic_error;
};

[[noreturn]] inline void contract_failed(const char* file, int line, const char* cond,
                                         const std::string& msg) {
  throw ContractError(msg + " (" + file + ":" + std::to_string(line) + ": " + cond + ")");
}

}  // namespace kd

// KD_REQUIRE(cond, msg): a precondition; throws kd::ContractError naming msg, file:line and cond.
#define KD_REQUIRE(cond, msg)                                             \
  do {                                                                    \
    if (!(cond)) ::kd::contract_failed(__FILE__, __LINE__, #cond, (msg)); \
  } while (0)
