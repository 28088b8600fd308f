// One thread pool for the CPU backend: OpenMP's. BLAS runs single-threaded inside the engine's own
// parallel regions (matmul splits its product into one block per thread), so OpenBLAS's pthread
// pool never competes with OpenMP's for the cores. docs/architecture.md ("Threads") explains the
// choice.
#pragma once

#include <cstddef>

namespace kd::cpu {

// Cores this process may run on (sched_getaffinity), at least 1.
int available_cores();

// The thread count a `[run] threads` value means: 0 -> available_cores(), otherwise n.
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

// Work below these sizes runs on the calling thread: waking the pool costs more than it saves.
// Elementwise ops count elements; row ops count row elements (rows * width).
inline constexpr size_t kParallelElems = size_t{1} << 16;

// OpenMP `if` helper: true when `work` is worth a parallel region.
inline bool worth_parallel(size_t work, size_t threshold = kParallelElems) {
  return work >= threshold;
}

}  // namespace kd::cpu
