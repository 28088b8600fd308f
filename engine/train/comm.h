// Data-parallel communication: the only file that knows MPI (engine/train/comm.cpp).
//
// A process started by an MPI launcher (mpirun, mpiexec, srun with PMI) is one rank of a job; any
// other process is the single rank 0 of a job of size 1, and every call here is then a no-op (a sum
// over one rank is the value itself). MPI is initialised only when the launcher's environment is
// present (OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK), so a plain `kdengine` and every test run
// without MPI exactly as before, and a build without MPI (KD_MPI=OFF or no MPI found) runs
// single-process only, refusing a launch of more than one rank with a clear error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/ops/ops.h"
#include "engine/train/backend.h"

namespace kd::comm {

// Joins the job when started by an MPI launcher (idempotent). Throws InputError when the launcher
// started several ranks but this build has no MPI.
void init();
// Leaves the job after a run that finished on every rank (a no-op without MPI). A rank that exits
// with an error does not call it: the launcher then ends the whole job (see docs/distributed.md).
void finalize();

int rank();      // 0-based; 0 without MPI
int size();      // ranks in the job; 1 without MPI
bool is_root();  // rank() == 0: the rank that prints, logs and checkpoints

// In-place sums over all ranks: every rank gets the same result.
void allreduce_sum(float* data, size_t n);
void allreduce_sum(double* data, size_t n);
void allreduce_sum(int64_t* data, size_t n);
// True on every rank when `flag` is true on any rank.
bool any(bool flag);
// Rank `root`'s bytes into every rank's buffer.
void broadcast(void* data, size_t bytes, int root = 0);
// Every rank's value, indexed by rank.
std::vector<uint64_t> allgather(uint64_t value);

// The step's collectives for a backend: the supervised-row count, the gradients and the loss sums
// summed over all ranks (backend.h's StepReducer), through the calls above.
class MpiStepReducer final : public StepReducer {
 public:
  int64_t sum_rows(int64_t local) override;
  void sum_grads(float* grads, size_t n) override;
  void sum_losses(LossSums& sums) override;
};

}  // namespace kd::comm
