#include "engine/ops/cpu/threads.h"

#include <cblas.h>
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

namespace kd::cpu {

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  const int n = CPU_COUNT(&set);
  return n > 0 ? n : 1;
}

int resolve_threads(int requested) {
  if (requested > 0) return requested;
  // OMP_NUM_THREADS's first entry (a list "4,2" sets nested levels) when it is a positive integer;
  // anything else is ignored, as OpenMP itself ignores it.
  if (const char* s = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(s, &end, 10);
    if (end != s && (*end == '\0' || *end == ',') && n >= 1 && n <= 1024) return int(n);
  }
  return available_cores();
}

void blas_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void ensure_thread_environment(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  execv("/proc/self/exe", argv);
  // Only reached when execv failed: run on with the policy OpenMP already chose.
}

int set_threads(int n) {
  if (n < 1) n = 1;
  blas_single_threaded();
  omp_set_num_threads(n);
  return n;
}

}  // namespace kd::cpu
