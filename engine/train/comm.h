// Data-parallel communication: the only file that knows MPI (engine/train/comm.cpp).
//
// A process started by an MPI launcher (mpirun, mpiexec, srun with PMI) is one rank of a job; any
// other process is the single rank 0 of a job of size 1, and every call here is then a no-op (a sum
// over one rank is the value itself). MPI is initialised only when the launcher's environment is
// present (OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK), so a plain `kdengine` and every test run
// without MPI exactly as before, and a build without MPI (KD_MPI=OFF or no MPI found) runs
// single-process only, refusing a launch of more than one rank with a clear error.
//
// Every collective here is nonblocking underneath (MPI_I...) and waited for by polling with a
// deadline ([distributed] timeout_s, set_timeout), so a rank that stops (SIGSTOP, a hung file
// system, an endless loop) or dies without the launcher noticing cannot hang the others forever:
// they throw RankLost, naming it. To name it, every rank tells every other rank, with a small
// point-to-point message, each time it arrives at a collective (its running count of collectives),
// and again about once a second while it waits in one. At the deadline the waiting rank reads
// those records: a rank whose count is behind its own did not arrive at this collective; a rank
// that arrived but has gone silent stopped while waiting in it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
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

// How long a collective may wait for the other ranks before RankLost (seconds, > 0; default 300).
void set_timeout(double seconds);
// The optimizer step the messages name (the trainer sets it at the start of each step).
void set_step(int64_t step);

// A rank that did not arrive at a collective within the timeout, or went silent inside one.
class RankLost : public std::runtime_error {
 public:
  RankLost(const std::string& what, int rank) : std::runtime_error(what), rank_(rank) {}
  int lost_rank() const { return rank_; }

 private:
  int rank_;
};

// In-place sums over all ranks: every rank gets the same result.
void allreduce_sum(float* data, size_t n);
void allreduce_sum(double* data, size_t n);
void allreduce_sum(int64_t* data, size_t n);
// The loss sums of every rank, added (LossSums::operator+= over the ranks).
void allreduce_sum(LossSums& sums);
// True on every rank when `flag` is true on any rank.
bool any(bool flag);
// Rank `root`'s bytes into every rank's buffer.
void broadcast(void* data, size_t bytes, int root = 0);
// Every rank's value, indexed by rank.
std::vector<uint64_t> allgather(uint64_t value);
// ZeRO-1 checkpoints: the sum over the ranks of n floats into rank 0's buffer, in place (the
// other ranks' buffers are unchanged). With each rank's moments filled in its own slice and zero
// elsewhere (Backend::save_state), the sum is the whole state, exactly, whatever the backend's
// slice layout (the GPU slices its padded device layout).
void sum_to_root(float* data, size_t n);

// The step's collectives for a backend (backend.h's StepReducer) over MPI. The backend-memory
// calls start MPI_Iallreduce / MPI_Ireduce_scatter / MPI_Iallgatherv and return; finish() polls
// them to completion under the deadline. progress() (called between layers of the backward) lets
// MPI advance them meanwhile: with one thread per rank MPI moves data only inside MPI calls.
class MpiStepReducer final : public StepReducer {
 public:
  explicit MpiStepReducer(bool shard_optimizer) : StepReducer(shard_optimizer) {}
  ~MpiStepReducer() override;
  int rank() const override { return comm::rank(); }
  int size() const override { return comm::size(); }
  int64_t sum_rows(int64_t local) override;
  void sum_losses(LossSums& sums) override;
  void sum_grads(float* data, size_t n) override;
  void sum_doubles(double* data, size_t n) override;
  void reduce_scatter(float* data, size_t shard, size_t begin, size_t end) override;
  void all_gather(void* data, size_t shard_bytes, size_t total_bytes) override;
  void progress() override;
  void finish() override;

 private:
  // reduce_scatter's pieces land here first (MPI's in-place reduce-scatter puts the result at the
  // start of the buffer); finish() copies each into place.
  struct Landing {
    float* dst;
    std::vector<float> buf;
  };
  std::vector<Landing> landings_;
  size_t used_ = 0;  // landings_ in use since the last finish()
};

// Polls done(ctx) until it returns true, as a collective under the deadline: every rank calls it
// at the same point (one arrival, named `what` in the messages), heartbeats while it waits, and
// RankLost after [distributed] timeout_s names the rank that did not arrive (or went silent). It
// does not wait for the other ranks. The CUDA backend waits for its step's end (a GPU event)
// with it, so a rank whose NCCL collectives never complete cannot hang the host. One rank: polls
// without a deadline.
void wait_local(const char* what, bool (*done)(void*), void* ctx);

}  // namespace kd::comm
