// One thread pool for the CPU backend: OpenMP's. BLAS runs single-threaded inside the engine's own
// parallel regions (matmul splits its product into one block per thread), so OpenBLAS's pthread
// pool never competes with OpenMP's for the cores. docs/architecture.md ("Threads") explains the
// choice.
#pragma once

#include <omp.h>

#include <cstddef>

namespace kd::cpu {

// Cores this process may run on (sched_getaffinity), at least 1.
int available_cores();

// The thread count a `[run] threads` value means: n when n > 0; for 0, OMP_NUM_THREADS when it is
// set to a positive integer (so `mpirun -x OMP_NUM_THREADS=1` gives each rank one thread), else
// available_cores().
int resolve_threads(int requested);

// Uses n threads (n >= 1) for every later parallel region of the CPU ops, and makes BLAS
// single-threaded. Returns n.
int set_threads(int n);

// Makes BLAS single-threaded (idempotent, cheap after the first call). Every op that calls BLAS
// calls it first, so tests and benchmarks that never call set_threads get the same arrangement.
void blas_single_threaded();

// OpenMP's idle threads spin (by default) waiting for the next parallel region. On a machine whose
// cores are shared with other busy processes, a spinning thread burns the time slice its partner
// needs, and a step ran up to 6x slower with 2 threads than with 1 (docs/results.md). Threads that
// sleep when idle (OMP_WAIT_POLICY=passive) avoid that at the cost of a wake-up per region.
// OpenMP reads the variable when the program loads, so: when neither OMP_WAIT_POLICY nor
// GOMP_SPINCOUNT is set, this sets OMP_WAIT_POLICY=passive and restarts the program (execv of
// /proc/self/exe with the same argv; on failure it carries on as it is). A value the user set is
// kept. Call it first thing in main().
void ensure_thread_environment(char** argv);

// The rule for every op: open a parallel region only for work that takes about 200 us or more on
// one core. Waking sleeping threads costs tens of microseconds on an idle machine, and up to a
// scheduler time slice on a busy one (a region ends when its slowest thread does). Each op states
// its threshold in its own units (elements, rows * width, FLOPs); this is the default.
inline constexpr size_t kParallelElems = size_t{1} << 16;

// OpenMP `if` helper: true when `work` is worth a parallel region.
inline bool worth_parallel(size_t work, size_t threshold = kParallelElems) {
  return work >= threshold;
}

// body(begin, end) over [0, n): one contiguous range per thread when n >= threshold, else one
// call on the calling thread. The ranges depend only on n and the thread count.
template <class Body>
void for_ranges(size_t n, size_t threshold, Body&& body) {
  if (n < threshold || omp_get_max_threads() == 1) {
    body(size_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    const size_t nt = static_cast<size_t>(omp_get_num_threads());
    const size_t begin = n / nt * t + (t < n % nt ? t : n % nt);
    const size_t end = begin + n / nt + (t < n % nt ? 1 : 0);
    if (end > begin) body(begin, end);
  }
}

}  // namespace kd::cpu
