#include "engine/train/comm.h"

#include <cstdlib>
#include <limits>
#include <stdexcept>

#include "engine/base/error.h"
#include "engine/base/trace.h"

#if KD_WITH_MPI
#include <mpi.h>
#endif

namespace kd::comm {

namespace {

// The environment an MPI launcher gives its ranks: Open MPI's mpirun, PMI-1/2 (MPICH, Slurm's srun
// --mpi=pmi2) and PMIx (srun --mpi=pmix).
bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

[[maybe_unused]] int launcher_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"})
    if (const char* s = std::getenv(v)) return std::atoi(s);
  return 1;
}

int g_rank = 0, g_size = 1;
bool g_active = false;  // MPI initialised by init() and not yet finalised

#if KD_WITH_MPI
// Large buffers go in chunks: MPI counts are int.
template <class F>
void chunked(size_t n, F f) {
  constexpr size_t kMax = size_t(1) << 30;
  for (size_t off = 0; off < n; off += kMax) f(off, int(std::min(kMax, n - off)));
}

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw std::runtime_error(std::string("MPI ") + what + " failed");
}
#endif

}  // namespace

void init() {
  if (g_active || !launched_by_mpi()) return;
#if KD_WITH_MPI
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) check(MPI_Init(nullptr, nullptr), "MPI_Init");
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  g_active = true;
#else
  if (launcher_size() > 1)
    throw InputError("started as one of " + std::to_string(launcher_size()) +
                     " ranks, but this kdengine was built without MPI (KD_MPI=OFF or no MPI "
                     "found); rebuild with MPI or run a single process");
#endif
}

void finalize() {
#if KD_WITH_MPI
  if (!g_active) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
  g_active = false;
  g_rank = 0;
  g_size = 1;
#endif
}

int rank() {
  return g_rank;
}
int size() {
  return g_size;
}
bool is_root() {
  return g_rank == 0;
}

void allreduce_sum([[maybe_unused]] float* data, [[maybe_unused]] size_t n) {
  if (g_size == 1) return;
#if KD_WITH_MPI
  chunked(n, [&](size_t off, int c) {
    check(MPI_Allreduce(MPI_IN_PLACE, data + off, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
          "MPI_Allreduce");
  });
#endif
}

void allreduce_sum([[maybe_unused]] double* data, [[maybe_unused]] size_t n) {
  if (g_size == 1) return;
#if KD_WITH_MPI
  chunked(n, [&](size_t off, int c) {
    check(MPI_Allreduce(MPI_IN_PLACE, data + off, c, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
          "MPI_Allreduce");
  });
#endif
}

void allreduce_sum([[maybe_unused]] int64_t* data, [[maybe_unused]] size_t n) {
  if (g_size == 1) return;
#if KD_WITH_MPI
  chunked(n, [&](size_t off, int c) {
    check(MPI_Allreduce(MPI_IN_PLACE, data + off, c, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD),
          "MPI_Allreduce");
  });
#endif
}

bool any(bool flag) {
  int64_t v = flag ? 1 : 0;
  allreduce_sum(&v, 1);
  return v > 0;
}

void broadcast(void* data, size_t bytes, int root) {
  if (g_size == 1) return;
#if KD_WITH_MPI
  chunked(bytes, [&](size_t off, int c) {
    check(MPI_Bcast(static_cast<char*>(data) + off, c, MPI_BYTE, root, MPI_COMM_WORLD),
          "MPI_Bcast");
  });
#else
  (void)data, (void)bytes, (void)root;
#endif
}

std::vector<uint64_t> allgather(uint64_t value) {
  std::vector<uint64_t> all(size_t(g_size), value);
#if KD_WITH_MPI
  if (g_size > 1)
    check(MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD),
          "MPI_Allgather");
#endif
  return all;
}

int64_t MpiStepReducer::sum_rows(int64_t local) {
  KD_RANGE_P("comm_rows", Phase::Comm, 1);
  allreduce_sum(&local, 1);
  return local;
}

void MpiStepReducer::sum_grads(float* grads, size_t n) {
  KD_RANGE_P("comm_grads", Phase::Comm, n);
  allreduce_sum(grads, n);
}

void MpiStepReducer::sum_losses(LossSums& s) {
  KD_RANGE_P("comm_losses", Phase::Comm, 7);
  double d[6] = {s.loss, s.ce, s.kd, s.kl, s.teacher_entropy, s.student_entropy};
  allreduce_sum(d, 6);
  int64_t rows = s.rows;
  allreduce_sum(&rows, 1);
  s.loss = d[0], s.ce = d[1], s.kd = d[2], s.kl = d[3];
  s.teacher_entropy = d[4], s.student_entropy = d[5];
  s.rows = rows;
}

}  // namespace kd::comm
