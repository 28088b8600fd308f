// Runs a shell command for the tests that drive the real kdengine binary (the command line,
// checkpoint tokenizers, MPI ranks): its exit status and everything it printed.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace kd::testing {

struct Result {
  int status = -1;     // the exit status; -1 when the command did not exit normally
  std::string output;  // stdout and stderr together
};

inline Result sh(const std::string& cmd) {
  Result r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace kd::testing
