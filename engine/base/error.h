// Errors, and which one to throw. The exception policy:
//
//   InputError     The user's input is wrong: a recipe, a data file or shard, a checkpoint, a
//                  tokenizer file, the command line. Thrown only where those are read and
//                  validated; the message names the file (and the line, key or tensor) and what
//                  was expected. The command line prints the message and exits 2.
//   ContractError  A function's precondition was broken by its caller: a programming error inside
//                  the engine (an op called with an unsupported shape or a null pointer, backward
//                  before forward, ...). Input that passed validation can never cause one, so the
//                  user's fix is a bug report, not an edit. Thrown by KD_REQUIRE below, whose
//                  message names file:line and the failed condition. Exit 1.
//   CudaError      A CUDA runtime or cuBLASLt call failed, the GPU running out of memory included.
//                  Thrown by KD_CUDA_CHECK (cuda/common.cuh), the one check for every such call.
//                  Exit 1.
//   anything else  (a failed write into out_dir, std::bad_alloc, a non-finite loss, ...) Exit 1.
//
// Input is validated once, where it is read; what reaches an op is trusted, so ops and the model
// check their preconditions with KD_REQUIRE and never throw InputError. report_error() maps the
// exception being handled to the message and the exit status (the command line calls it); an
// interrupted run is not an exception: it returns normally and exits kExitInterrupted.
#pragma once

#include <iosfwd>
#include <stdexcept>
#include <string>
#include <string_view>

namespace kd {

// Exit statuses of the command line.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitBadInput = 2;
inline constexpr int kExitInterrupted = 130;

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ContractError : std::logic_error {
  using std::logic_error::logic_error;
};

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {

// This header's path as the including translation unit sees it (absolute, or relative to the
// compiler's working directory); internal linkage, so each translation unit keeps its own.
static constexpr std::string_view kErrorHeader = __FILE__;

// `file` (a __FILE__) relative to the source tree: the tree's root is kErrorHeader without its
// "engine/base/error.h", spelled the same way as the file's path in the same translation unit. A
// file outside the tree, or spelled another way, is returned whole.
inline std::string source_path(const char* file, std::string_view error_header) {
  constexpr std::string_view kSelf = "engine/base/error.h";
  const std::string_view f(file);
  if (!error_header.ends_with(kSelf)) return std::string(f);
  const std::string_view root = error_header.substr(0, error_header.size() - kSelf.size());
  return std::string(f.starts_with(root) ? f.substr(root.size()) : f);
}

// Throws ContractError("FILE:LINE: contract violated: (COND): MESSAGE"). Defined in the header so
// that every library (the CUDA kernels' included) may use it without linking another.
[[noreturn]] inline void contract_failed(const char* file, std::string_view error_header, int line,
                                         const char* cond, const std::string& message) {
  throw ContractError(source_path(file, error_header) + ":" + std::to_string(line) +
                      ": contract violated: (" + cond + "): " + message);
}

}  // namespace detail

// Checks a precondition (or any contract) inside the engine: when `cond` is false, throws
// ContractError naming this file (relative to the source tree) and line, the condition's text and
// `message` (a std::string or a string literal, evaluated only when the check fails, so it may
// format freely).
#define KD_REQUIRE(cond, message)                                                          \
  do {                                                                                     \
    if (!(cond)) [[unlikely]]                                                              \
      ::kd::detail::contract_failed(__FILE__, ::kd::detail::kErrorHeader, __LINE__, #cond, \
                                    message);                                              \
  } while (0)

// Call inside a catch block (catch (...) included): writes the message of the exception being
// handled to `err` the way the policy above says, and returns the exit status for it
// (kExitBadInput for InputError, kExitFailure for everything else).
int report_error(std::ostream& err);

}  // namespace kd
